"""Set the connection-level timeouts on the server, for a transaction-pooling PgBouncer.

PgBouncer in transaction mode refuses the libpq `options` startup parameter
that carries statement_timeout, lock_timeout and
idle_in_transaction_session_timeout when Django connects directly. Behind it
(DB_PGBOUNCER=true) they are set for the app's role in its database instead:

    ALTER ROLE <current_user> IN DATABASE <current_database> SET statement_timeout = '3000ms'

which every new session of that role there starts with. Sessions that started
before keep their old values until they end, and PgBouncer lends its server
connections on for up to server_lifetime (an hour by default), the one this
very command runs on included: so after a change the idle
sessions of this role in this database that predate it and come from the same
address as the command's own (the PgBouncer) are ended (PgBouncer replaces an
ended server connection with a fresh one), and the busy ones are counted
(RECONNECT on the PgBouncer admin console replaces them gracefully).
--keep-sessions leaves them all.

Idempotent: values already in place change nothing and end nothing. With
DB_PGBOUNCER off every connection sends its timeouts itself; the command then
does nothing unless given --force. --reset removes the three settings.
"""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DEFAULT_DB_ALIAS, DatabaseError, connections, transaction
from psycopg import sql

from velro.db import TIMEOUT_SETTINGS, connection_timeouts, timeouts_stored

# The sessions of this role in this database that started before a moment and
# come from where the one asking comes from (the PgBouncer; app processes
# connected straight to PostgreSQL elsewhere are left alone), except the one
# asking: how many were idle and ended (when asked to), and how many there were.
STALE_SESSIONS = """
    SELECT count(*) FILTER (WHERE CASE WHEN %s AND state = 'idle' THEN pg_terminate_backend(pid) ELSE false END),
           count(*)
    FROM pg_stat_activity
    WHERE usename = current_user AND datname = current_database() AND backend_type = 'client backend'
      AND client_addr IS NOT DISTINCT FROM inet_client_addr() AND pid <> pg_backend_pid() AND backend_start < %s
"""


class Command(BaseCommand):
    help = (
        "Set statement_timeout, lock_timeout and idle_in_transaction_session_timeout (DB_*_TIMEOUT_MS) on the"
        " server for this role in this database (ALTER ROLE ... IN DATABASE ... SET), so they hold behind a"
        " transaction-pooling PgBouncer (DB_PGBOUNCER=true). Idempotent; run at each deploy."
    )
    # The database system check warns about exactly what this command fixes.
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--database", default=DEFAULT_DB_ALIAS, help="database alias (default: default)")
        parser.add_argument(
            "--force", action="store_true", help="apply even with DB_PGBOUNCER off (connections send them anyway)"
        )
        parser.add_argument("--reset", action="store_true", help="remove the three settings from this role here")
        parser.add_argument(
            "--keep-sessions",
            action="store_true",
            help="after a change, do not end the idle sessions that predate it (they keep the old values)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        alias = options["database"]
        connection = connections[alias]
        if connection.vendor != "postgresql":
            self.stdout.write(f"db_apply_timeouts: {connection.vendor} is not PostgreSQL: nothing to apply")
            return
        if not (settings.DB_PGBOUNCER or options["force"] or options["reset"]):
            self.stdout.write(
                "db_apply_timeouts: DB_PGBOUNCER is off: every connection sends its timeouts itself (libpq options);"
                " nothing applied (--force to set them on the server anyway)"
            )
            return

        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT current_user, current_database()")
                role, database = cursor.fetchone()
            stored = timeouts_stored(alias)
        except DatabaseError as exc:
            raise CommandError(f"db_apply_timeouts: cannot read the database ({exc})") from exc
        wanted = {} if options["reset"] else connection_timeouts()
        target = sql.SQL("ALTER ROLE {} IN DATABASE {}").format(sql.Identifier(role), sql.Identifier(database))
        changes: list[tuple[str, sql.Composable]] = []
        for name in TIMEOUT_SETTINGS:
            value = wanted.get(name)
            if value is None and name in stored:
                statement = sql.SQL("{} RESET {}").format(target, sql.Identifier(name))
                changes.append((f"{name}: {stored[name]}ms -> not set", statement))
            elif value is not None and stored.get(name) != value:
                was = "not set" if stored.get(name) is None else f"{stored[name]}ms"
                statement = sql.SQL("{} SET {} = {}").format(target, sql.Identifier(name), sql.Literal(f"{value}ms"))
                changes.append((f"{name}: {was} -> {value}ms", statement))
        where = f"role {role} in database {database}"
        if not changes:
            state = "not set" if options["reset"] else "already in place"
            self.stdout.write(self.style.SUCCESS(f"db_apply_timeouts: {where}: timeouts {state}, nothing changed"))
            return

        connection.ensure_connection()
        statements = [statement.as_string(connection.connection) for _, statement in changes]
        try:
            with transaction.atomic(using=alias), connection.cursor() as cursor:
                for statement in statements:
                    cursor.execute(statement)
        except DatabaseError as exc:
            script = ";\n".join(statements)
            raise CommandError(
                f"db_apply_timeouts: could not set them for {where} ({exc}). A superuser can run:\n{script};"
            ) from exc
        for change, _ in changes:
            self.stdout.write(f"{where}: {change}")
        self.stdout.write(self.style.SUCCESS(f"db_apply_timeouts: {len(changes)} setting(s) changed for {where}"))
        if settings.DB_PGBOUNCER:
            self._end_stale_sessions(alias, where, end_idle=not options["keep_sessions"])

    def _end_stale_sessions(self, alias: str, where: str, *, end_idle: bool) -> None:
        connection = connections[alias]
        with connection.cursor() as cursor:
            cursor.execute("SELECT clock_timestamp()")  # after the commit: later sessions start with the new values
            (since,) = cursor.fetchone()
            cursor.execute(STALE_SESSIONS, [end_idle, since])
            ended, stale = cursor.fetchone()
        if end_idle:
            try:
                with connection.cursor() as cursor:
                    # The server connection this runs on started before the change too.
                    cursor.execute("SELECT pg_terminate_backend(pg_backend_pid())")
            except DatabaseError:
                pass  # the expected end of that session
            finally:
                pool_log = logging.getLogger("psycopg.pool")
                level = pool_log.level
                pool_log.setLevel(logging.ERROR)  # not "discarding closed connection": we closed it
                try:
                    connection.close()
                finally:
                    pool_log.setLevel(level)
            self.stdout.write(f"{where}: ended {ended + 1} idle session(s) that started before the change")
        if stale - ended:
            self.stdout.write(
                self.style.WARNING(
                    f"{where}: {stale - ended} session(s) that started before the change keep the old values until"
                    " they end (behind PgBouncer: up to server_lifetime): RECONNECT on the PgBouncer admin console"
                    " replaces them now"
                )
            )
