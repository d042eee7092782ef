"""Behind a transaction-pooling PgBouncer (DB_PGBOUNCER=true) the database timeouts still hold.

PgBouncer in transaction mode refuses the libpq `options` startup parameter
that carries statement_timeout, lock_timeout and
idle_in_transaction_session_timeout on a direct connection; told to ignore it,
it connects with none of them, and a login against a locked table hangs. With
DB_PGBOUNCER the settings send no `options`, and `manage.py db_apply_timeouts`
sets the timeouts on the server for the app's role in its database, where
every server connection PgBouncer opens picks them up.

Each test starts its own pgbouncer (pool_mode = transaction, on a free port
of 127.0.0.1) in front of this run's test database, and stops it after.
Django runs in subprocesses (manage.py, a gunicorn) with DATABASE_URL at that
pgbouncer, exactly as deployed; this process only sets up and observes.
pgbouncer missing: the tests skip, and fail under CI=true.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from django.call_command import call_command if False else None  # placeholder, replaced below
