"""Velro fault drill: the failure contract of DESIGN.md, proven under load.

One command:

    .venv/bin/python -m loadtest.drill                      # 10 s per fault, 20 RPS, all five faults
    .venv/bin/python -m loadtest.drill --fault-seconds 3 --rps 10          # the CI length
    .venv/bin/python -m loadtest.drill --faults db_stall,celery_worker --keep

It starts its own isolated stack on loopback (loadtest.stack) and never touches
the machine's main Redis (6379) or the main databases:

- a dedicated PostgreSQL database (`velro_drill`: dropped, created and migrated
  at start, dropped at the end unless --keep) on 127.0.0.1:5432 as role root;
- two dedicated redis-server processes on free ports, one for the cache and one
  for the Celery broker, without persistence, so either can be stopped and
  restarted on its port (and comes back empty, like a crashed Redis would);
- an aiosmtpd SMTP listener in this process, recording every message by its
  `X-Velro-Event` header and recipients;
- gunicorn (gunicorn.conf.py, 2 workers), a Celery worker and Celery beat, each
  in its own process group, all pointed at the above, with short sweeper,
  visibility and breaker timings (see `run.DRILL_ENV`).

Then it drives steady open-loop traffic (request i leaves at t0 + i/rps, answered
or not) with the benchmark's load generator (loadtest.loadgen), see `traffic`:
15% signups with the referral codes of earlier drill users (one in ten an
unknown code), 20% logins, 20% refreshes, 45% GET /me; and injects (`faults`),
one at a time, each for --fault-seconds followed by a recovery window
(--recovery-seconds, then at most 30 s more until no request has been waiting
over 1 s, so one fault's backlog is not blamed on the next):

    cache_redis      the cache redis-server stopped (SIGTERM), then restarted on its port
    db_stall         a second connection holds LOCK TABLE auth_users IN ACCESS EXCLUSIVE MODE
    broker_redis     the broker redis-server stopped, then restarted (empty) on its port
    celery_worker    the Celery worker's process group SIGKILLed with tasks in flight; a new one started
    gunicorn_worker  one gunicorn worker SIGKILLed (the master replaces it; the window
                     lasts until the replacement has warmed up)

Requests are counted in the window in which they were sent. The contract per
window (`invariants.summarize_phase`): no 4xx (the drill sends only valid
requests), no 5xx except 503 + Retry-After for a request that was in flight
while auth_users was locked, no request unanswered within 5 s, no dropped
connection except for requests in flight (or queued) on the gunicorn worker at
the instant it was killed, and every process of the stack still running at the
end of the window (one that died is reported against that window and
restarted, as a supervisor would).

After the last fault it waits (bounded, --settle-seconds) for the sweeper and
redelivery to finish the work, then checks (`invariants.check_invariants`),
directly in the database and in the SMTP listener: every signup answered 201
is present (user + mirror row); every referral intent processed, with one
Referral each, credited exactly once when its code was valid, rejected
otherwise (and each referrer's credited_count equal to its credited
referrals); every expected email (a welcome per user, a referral email per
credited referral) delivered exactly once, to the right address.

Output (`report`): a Markdown table and the invariant lines on stdout, the JSON
report (every request, the fault timeline, ERROR lines of the stack's logs) in
var/drill/drill.json (--out); logs in var/drill/. Exit status 0 only when every
window kept the contract and nothing was lost or duplicated; 1 otherwise; 2
when the stack could not be set up; 130 when interrupted (Ctrl-C and SIGTERM
stop the stack and drop the database; a drill killed with SIGKILL leaves
processes that the next drill on the same --run-dir stops first).

Modules: `run` (options, the stack, the fault loop, the command line),
`traffic`, `faults`, `invariants`, `report`.
"""

from __future__ import annotations

import sys

from loadtest import LoadTestError

# The stack's sizes (the contract checks that gunicorn still runs all its workers).
WEB_CONCURRENCY = 2
GUNICORN_THREADS = 2
CELERY_CONCURRENCY = 2


class DrillError(LoadTestError):
    """The drill cannot run (setup failed, bad arguments), or a fault could not be undone."""


def log(message: str) -> None:
    print(f"[drill] {message}", file=sys.stderr, flush=True)
