"""What the drill checks: the contract per fault window, and the invariants at the end.

- `summarize_phase`: one window's requests against the failure contract (which
  answers the window's fault excuses: `Exposure`);
- `settle`: wait (bounded) for the sweeper and redeliveries to finish the work;
- `check_invariants`: in PostgreSQL and the SMTP listener: nothing lost, nothing
  done twice, every process alive.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import psycopg

from loadtest.drill import WEB_CONCURRENCY
from loadtest.drill.faults import FAULT_TITLES, KNOWN_UPSTREAM
from loadtest.loadgen import REQUEST_TIMEOUT, percentile, rounded
from loadtest.stack import Database, Stack

if TYPE_CHECKING:
    from loadtest.drill.traffic import Record, Traffic


@dataclass
class Exposure:
    """When the faults that excuse an answer were in effect (traffic clock, seconds)."""

    stalls: list[tuple[float, float]] = field(default_factory=list)  # auth_users locked
    kills: list[float] = field(default_factory=list)  # a gunicorn worker SIGKILLed

    SLACK = 0.05
    # After a stalled query a web process fails fast (503 + Retry-After) for
    # DB_BREAKER_COOLDOWN_SECONDS instead of queueing behind the stall
    # (velro.db.DatabaseBreaker): those 503s belong to the stall too.
    BREAKER_COOLDOWN = 1.0

    def during_stall(self, r: Record) -> bool:
        return any(
            r.t <= end + self.BREAKER_COOLDOWN + self.SLACK and r.done >= start - self.SLACK
            for start, end in self.stalls
        )

    def in_flight_at_kill(self, r: Record) -> bool:
        return any(r.t - self.SLACK <= kill <= r.done + self.SLACK for kill in self.kills)


def summarize_phase(
    name: str, records: list[Record], exposure: Exposure, process_problems: Sequence[str] = ()
) -> dict[str, Any]:
    """One fault window: the requests sent in it, what they got, what broke the contract.

    A 503 is allowed (with Retry-After) only for a request that was in flight
    while the database was stalled (or sent within the database breaker's
    cooldown right after it); a dropped connection only for a request
    that was in flight (or queued) on the gunicorn worker at the moment it was
    killed. A timeout (no answer within 5 s), any 4xx to these valid requests
    and any other 5xx are violations wherever they happen; so is a process of
    the stack that is not running at the end of the window (and was not
    brought back by the fault's own restore).
    """
    statuses = Counter(r.status for r in records)
    latencies = [r.latency_ms for r in records]
    ok = sum(1 for r in records if 200 <= r.status < 300)
    client_errors = [r for r in records if 400 <= r.status < 500]
    unavailable = [r for r in records if r.status == 503]
    unavailable_bare = [r for r in unavailable if not r.retry_after]
    unavailable_excused = [r for r in unavailable if r.retry_after and exposure.during_stall(r)]
    unavailable_outside = [r for r in unavailable if r.retry_after and not exposure.during_stall(r)]
    other_5xx = [r for r in records if r.status >= 500 and r.status != 503]
    no_answer = [r for r in records if r.status == 0]
    timeouts = [r for r in no_answer if r.error == "timeout"]
    dropped = [r for r in no_answer if r.error != "timeout"]
    dropped_excused = [r for r in dropped if exposure.in_flight_at_kill(r)]
    dropped_other = [r for r in dropped if not exposure.in_flight_at_kill(r)]

    def describe(rows: list[Record]) -> str:
        return ", ".join(f"{n}x {key}" for key, n in Counter(f"{r.op} {r.error or r.status}" for r in rows).items())

    violations: list[str] = [p for p in process_problems if not p.startswith(KNOWN_UPSTREAM)]
    upstream = [p for p in process_problems if p.startswith(KNOWN_UPSTREAM)]
    if other_5xx:
        violations.append(f"{len(other_5xx)} other 5xx ({describe(other_5xx)})")
    if unavailable_bare:
        violations.append(f"{len(unavailable_bare)} 503 without Retry-After ({describe(unavailable_bare)})")
    if unavailable_outside:
        violations.append(
            f"{len(unavailable_outside)} 503 outside the database stall ({describe(unavailable_outside)})"
        )
    if client_errors:
        violations.append(f"{len(client_errors)} 4xx to valid requests ({describe(client_errors)})")
    if timeouts:
        violations.append(f"{len(timeouts)} unanswered within {REQUEST_TIMEOUT:g} s ({describe(timeouts)})")
    if dropped_other:
        violations.append(f"{len(dropped_other)} connections dropped ({describe(dropped_other)})")
    notes = list(upstream)
    if unavailable_excused:
        notes.append(f"{len(unavailable_excused)} 503 + Retry-After during the stall")
    if dropped_excused:
        notes.append(f"{len(dropped_excused)} in flight on the killed worker: connection dropped")
    by_op = {}
    for op in sorted({r.op for r in records}):
        rows = [r for r in records if r.op == op]
        by_op[op] = {
            "sent": len(rows),
            "status_counts": {str(k): v for k, v in sorted(Counter(r.status for r in rows).items())},
            "worst_ms": round(max(r.latency_ms for r in rows), 1),
            "p50_ms": rounded(percentile([r.latency_ms for r in rows], 50), 1),
            "p95_ms": rounded(percentile([r.latency_ms for r in rows], 95), 1),
        }
    return {
        "fault": name,
        "title": FAULT_TITLES.get(name, name),
        "sent": len(records),
        "2xx": ok,
        "4xx": len(client_errors),
        "503": len(unavailable),
        "503_without_retry_after": len(unavailable_bare),
        "503_outside_stall": len(unavailable_outside),
        "other_5xx": len(other_5xx),
        "no_answer": len(no_answer),
        "timeouts": len(timeouts),
        "dropped_in_flight_at_kill": len(dropped_excused),
        "worst_ms": round(max(latencies), 1) if latencies else None,
        "p50_ms": rounded(percentile(latencies, 50), 1),
        "p95_ms": rounded(percentile(latencies, 95), 1),
        "server_p50_ms": rounded(percentile([r.server_ms for r in records if r.server_ms is not None], 50), 1),
        "server_worst_ms": max((r.server_ms for r in records if r.server_ms is not None), default=None),
        "status_counts": {str(k): v for k, v in sorted(statuses.items())},
        "errors": dict(Counter(r.error for r in records if r.error)),
        "by_op": by_op,
        "violations": violations,
        "notes": notes,
        "ok": not violations,
    }


def invariant(name: str, ok: bool, summary: str, **detail: Any) -> dict[str, Any]:
    return {"name": name, "ok": ok, "summary": summary, **detail}


def work_pending(db: Database) -> dict[str, int]:
    with db.connect(autocommit=True) as conn:
        row = conn.execute(
            """
            SELECT
              (SELECT count(*) FROM referral_intents WHERE status = 'pending'),
              (SELECT count(*) FROM referrals WHERE status = 'pending' AND referrer_id IS NOT NULL),
              (SELECT count(*) FROM email_notifications WHERE status = 'pending'
                 OR (status = 'sending' AND smtp_started_at IS NULL)),
              (SELECT count(*) FROM email_notifications WHERE status = 'sending')
            """
        ).fetchone()
    return {"intents": row[0], "referrals": row[1], "emails_pending": row[2], "emails_sending": row[3]}


async def settle(stack: Stack, *, timeout: float) -> dict[str, Any]:
    """Wait (bounded) until no work is pending and the SMTP listener is quiet."""
    started = time.monotonic()
    last_mails = -1
    quiet = 0
    pending: dict[str, int] = {}
    while True:
        try:
            pending = await asyncio.to_thread(work_pending, stack.db)
        except psycopg.Error as exc:
            pending = {"error": str(exc)}
        mails = len(stack.smtp.sink.snapshot())
        idle = pending.get("intents") == 0 and pending.get("referrals") == 0 and pending.get("emails_pending") == 0
        quiet = quiet + 1 if idle and mails == last_mails else 0
        last_mails = mails
        elapsed = time.monotonic() - started
        if quiet >= 3:
            return {"settled": True, "seconds": round(elapsed, 1), "pending": pending}
        if elapsed > timeout:
            return {"settled": False, "seconds": round(elapsed, 1), "pending": pending}
        await asyncio.sleep(1.0)


def check_invariants(stack: Stack, traffic: Traffic, timeline: list[dict[str, Any]]) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    with stack.db.connect(autocommit=True) as conn:
        users = {
            row[0]: {"email": row[1], "mirror_id": row[2], "mirror_email": row[3]}
            for row in conn.execute(
                "SELECT u.id::text, u.email, m.id::text, m.email FROM auth_users u LEFT JOIN users m ON m.id = u.id"
            )
        }
        intents = [
            {"id": row[0], "referred": row[1], "code": row[2], "status": row[3], "owner": row[4]}
            for row in conn.execute(
                "SELECT i.id, i.referred_id::text, i.code, i.status, rc.user_id::text"
                " FROM referral_intents i LEFT JOIN referral_codes rc ON rc.code = upper(i.code)"
            )
        ]
        referrals = {
            row[1]: {"id": row[0], "referrer": row[2], "status": row[3], "reason": row[4]}
            for row in conn.execute(
                "SELECT id::text, referred_id::text, referrer_id::text, status, reason FROM referrals"
            )
        }
        referral_rows = conn.execute("SELECT count(*) FROM referrals").fetchone()[0]
        counters = {row[0]: row[1] for row in conn.execute("SELECT user_id::text, credited_count FROM referral_codes")}
        notifications = {
            row[0]: {
                "status": row[1],
                "recipient": row[2],
                "attempts": row[3],
                "last_error": row[4],
                "created": None if row[5] is None else phase_at(float(row[5]) - traffic.t0_wall, timeline),
                "claimed": None if row[6] is None else phase_at(float(row[6]) - traffic.t0_wall, timeline),
            }
            for row in conn.execute(
                "SELECT n.event_key, n.status, u.email, n.attempts, n.last_error,"
                " extract(epoch FROM n.created_at), extract(epoch FROM n.claimed_at)"
                " FROM email_notifications n JOIN auth_users u ON u.id = n.recipient_id"
            )
        }

    # 1. every signup answered 201 is there, with its mirror row
    created = [s for s in traffic.signups if s.status == 201]
    missing = [s.email for s in created if s.user_id not in users]
    no_mirror = [
        s.email
        for s in created
        if s.user_id in users
        and (users[s.user_id]["mirror_id"] is None or users[s.user_id]["mirror_email"] != users[s.user_id]["email"])
    ]
    extra = len(users) - len(created)
    results.append(
        invariant(
            "signups_present",
            not missing and not no_mirror,
            f"{len(created)} signups answered 201: {len(created) - len(missing)} users present, "
            f"{len(no_mirror)} without a matching mirror row"
            + (f" ({extra} more users committed whose answer the client never saw)" if extra > 0 else ""),
            missing=missing[:20],
            without_mirror=no_mirror[:20],
            users_in_db=len(users),
        )
    )

    # 2. every 201 signup with a code has its intent
    intent_by_referred = {i["referred"]: i for i in intents}
    no_intent = [s.email for s in created if s.code_sent and s.user_id not in intent_by_referred]
    results.append(
        invariant(
            "intents_recorded",
            not no_intent,
            f"{sum(1 for s in created if s.code_sent)} signups with a code answered 201: "
            f"{len(no_intent)} without an intent row",
            missing=no_intent[:20],
        )
    )

    # 3. every intent processed, one Referral each, credited iff its code was valid
    unprocessed = [i["id"] for i in intents if i["status"] != "done"]
    valid = [i for i in intents if i["owner"] and i["owner"] != i["referred"]]
    invalid = [i for i in intents if not (i["owner"] and i["owner"] != i["referred"])]
    no_referral = [i["id"] for i in intents if i["referred"] not in referrals]
    wrong = [
        i["id"]
        for i in valid
        if i["referred"] in referrals
        and (referrals[i["referred"]]["status"] != "credited" or referrals[i["referred"]]["referrer"] != i["owner"])
    ]
    wrongly_credited = [
        i["id"] for i in invalid if i["referred"] in referrals and referrals[i["referred"]]["status"] != "rejected"
    ]
    orphans = [k for k in referrals if k not in intent_by_referred]
    credited = {v["id"]: v for v in referrals.values() if v["status"] == "credited"}
    ok = not (unprocessed or no_referral or wrong or wrongly_credited or orphans) and referral_rows == len(intents)
    results.append(
        invariant(
            "referrals_credited_once",
            ok,
            f"{len(intents)} intents ({len(valid)} valid codes, {len(invalid)} unknown): "
            f"{len(unprocessed)} unprocessed, {referral_rows} Referral rows, {len(credited)} credited, "
            f"{len(no_referral)} missing, {len(wrong)} valid but not credited to the code's owner, "
            f"{len(wrongly_credited)} invalid but not rejected",
            unprocessed=unprocessed[:20],
            missing=no_referral[:20],
            not_credited=wrong[:20],
            invalid_not_rejected=wrongly_credited[:20],
            without_intent=orphans[:20],
        )
    )

    # 4. credited_count == credited referrals, for every referrer (no double credit)
    per_referrer = Counter(v["referrer"] for v in credited.values())
    drift = {
        user_id: {"credited_count": count, "credited_referrals": per_referrer.get(user_id, 0)}
        for user_id, count in counters.items()
        if count != per_referrer.get(user_id, 0)
    }
    results.append(
        invariant(
            "credited_counts_match",
            not drift,
            f"{len(counters)} referral codes: sum(credited_count) = {sum(counters.values())}, "
            f"credited referrals = {len(credited)}, {len(drift)} counters off",
            drift=dict(list(drift.items())[:20]),
        )
    )

    # 5. every expected email recorded and delivered exactly once, to the right address
    expected: dict[str, str] = {f"welcome:{uid}": u["email"].lower() for uid, u in users.items()}
    for referral_id, referral in credited.items():
        expected[f"referral_credited:{referral_id}"] = users.get(referral["referrer"], {}).get("email", "").lower()
    mails = stack.smtp.sink.snapshot()
    delivered = Counter(m.event for m in mails)
    not_recorded = sorted(set(expected) - set(notifications))
    never_delivered = sorted(key for key in expected if delivered[key] == 0)
    duplicates = {key: n for key, n in delivered.items() if n > 1}
    unexpected = sorted(str(key) for key in delivered if key not in expected)
    misaddressed = sorted({m.event for m in mails if m.event in expected and m.recipients != [expected[m.event]]})
    lost_detail = {key: notifications.get(key, {"status": "no row"}) for key in never_delivered[:20]}
    results.append(
        invariant(
            "emails_delivered_once",
            not (not_recorded or never_delivered or duplicates or unexpected or misaddressed),
            f"{len(expected)} emails expected ({sum(1 for k in expected if k.startswith('welcome:'))} welcome, "
            f"{len(credited)} referral): {len(mails)} received, {len(never_delivered)} never delivered, "
            f"{len(duplicates)} duplicated, {len(unexpected)} unexpected, {len(misaddressed)} misaddressed",
            never_delivered=lost_detail,
            not_recorded=not_recorded[:20],
            duplicates=dict(list(duplicates.items())[:20]),
            unexpected=unexpected[:20],
            misaddressed=misaddressed[:20],
            notification_status=dict(Counter(n["status"] for n in notifications.values())),
        )
    )

    # 6. the stack is whole again
    processes = stack.processes()
    whole = all(v for k, v in processes.items() if k != "gunicorn_workers") and (
        processes["gunicorn_workers"] >= WEB_CONCURRENCY
    )
    results.append(
        invariant(
            "processes_alive",
            whole,
            ", ".join(f"{k}={v}" for k, v in processes.items()),
            processes=processes,
        )
    )
    return results


def phase_at(t: float, timeline: list[dict[str, Any]]) -> str:
    """Which window (and stage) a traffic-clock time falls in."""
    where = "baseline"
    for entry in timeline:
        if t >= entry["start_s"]:
            restored = entry.get("restored_s")
            where = f"{entry['fault']} ({'fault' if restored is None or t < restored else 'recovery'})"
    if timeline and t > timeline[-1]["end_s"]:
        where = "after the traffic (settle)"
    return where
