"""The benchmark's `mfa` scenario (loadtest.benchmark --scenarios mfa): the latency of
a second-factor verify on Velro (no peer: the stock peer has no MFA).

Preparation, over the HTTP API: `users` accounts sign up, enroll a TOTP factor
(POST /api/v1/auth/mfa/factors {friendly_name} -> {factor: {id}, totp: {secret}}),
challenge and verify it once with pyotp (which makes them aal2), and take a
fresh set of recovery codes (POST /api/v1/auth/mfa/recovery-codes).

Measured, for each user once, by `concurrency` closed-loop clients: password
sign-in -> challenge -> verify with a fresh code -> GET /me with the aal2
token; then password sign-in -> recovery-code verify. One TOTP verify per user
per 30 s step (the measured one comes from a later step than the enrolment's),
so no verify is refused as a replay. Each request's latency is kept by kind:
login, challenge, verify, me, recovery_verify (p50/p90/p99 each).

When the TOTP routes answer 404 (a build without TOTP factors) the scenario
is skipped with a note.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx

from loadtest.loadgen import percentile, rounded

API = "/api/v1/auth"
FACTORS = f"{API}/mfa/factors"
RECOVERY_CODES = f"{API}/mfa/recovery-codes"
RECOVERY_VERIFY = f"{API}/mfa/recovery-codes/verify"
TOTP_PERIOD = 30
STEPS = ("login", "challenge", "verify", "me", "recovery_verify")
REQUEST_TIMEOUT = 10.0


class MfaUnavailable(Exception):
    """The server has no TOTP factor routes (404): the scenario is skipped."""


@dataclass
class MfaUser:
    email: str
    password: str
    factor_id: str = ""
    secret: str = ""
    recovery_codes: list[str] = field(default_factory=list)
    enrolled_step: int = 0


@dataclass
class Samples:
    latencies: dict[str, list[float]] = field(default_factory=lambda: {step: [] for step in STEPS})
    statuses: dict[str, Counter] = field(default_factory=lambda: {step: Counter() for step in STEPS})

    def add(self, step: str, status: int, ms: float) -> None:
        self.statuses[step][str(status)] += 1
        if 200 <= status < 300:
            self.latencies[step].append(ms)


def _check(response: httpx.Response, what: str) -> dict[str, Any]:
    if response.status_code == 404 and what.startswith("enroll"):
        raise MfaUnavailable(f"{FACTORS} answered 404: this build has no TOTP factors (the TOTP branch)")
    if response.status_code >= 300:
        raise RuntimeError(f"mfa setup, {what}: {response.status_code} {response.text[:300]}")
    return response.json() if response.content else {}


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _code(secret: str) -> str:
    import pyotp  # a runtime dependency of Velro (accounts.totp): present in its venv

    return pyotp.TOTP(secret).now()


def prepare_user(client: httpx.Client, user: MfaUser) -> None:
    """Sign up, enroll and verify a TOTP factor, take a fresh set of recovery codes."""
    body = _check(client.post(f"{API}/signup", json={"email": user.email, "password": user.password}), "signup")
    token = body["access_token"]
    enrolled = _check(
        client.post(FACTORS, json={"friendly_name": "bench"}, headers=_bearer(token)), "enroll a TOTP factor"
    )
    user.factor_id, user.secret = enrolled["factor"]["id"], enrolled["totp"]["secret"]
    challenge = _check(client.post(f"{FACTORS}/{user.factor_id}/challenge", headers=_bearer(token)), "challenge")
    user.enrolled_step = int(time.time()) // TOTP_PERIOD
    verified = _check(
        client.post(
            f"{FACTORS}/{user.factor_id}/verify",
            json={"challenge_id": challenge["id"], "code": _code(user.secret)},
            headers=_bearer(token),
        ),
        "verify (enrolment)",
    )
    codes = _check(client.post(RECOVERY_CODES, headers=_bearer(verified["access_token"])), "recovery codes")
    user.recovery_codes = codes["codes"]


def _timed(samples: Samples, step: str, send: Any) -> httpx.Response:
    start = time.perf_counter()
    response = send()
    samples.add(step, response.status_code, (time.perf_counter() - start) * 1000)
    return response


def _login(client: httpx.Client, samples: Samples, user: MfaUser) -> str | None:
    response = _timed(samples, "login", lambda: client.post(f"{API}/login", json=_credentials(user)))
    return response.json()["access_token"] if response.status_code == 200 else None


def _credentials(user: MfaUser) -> dict[str, str]:
    return {"email": user.email, "password": user.password}


def measure_user(client: httpx.Client, samples: Samples, user: MfaUser) -> None:
    """One sequence per user: sign-in, challenge, verify, /me; sign-in, recovery code."""
    token = _login(client, samples, user)
    if token is None:
        return
    factor = f"{FACTORS}/{user.factor_id}"
    response = _timed(samples, "challenge", lambda: client.post(f"{factor}/challenge", headers=_bearer(token)))
    if response.status_code == 201:  # a challenge is created
        body = {"challenge_id": response.json()["id"], "code": _code(user.secret)}
        verified = _timed(samples, "verify", lambda: client.post(f"{factor}/verify", json=body, headers=_bearer(token)))
        if verified.status_code == 200:
            aal2 = verified.json()["access_token"]
            _timed(samples, "me", lambda: client.get(f"{API}/me", headers=_bearer(aal2)))
    token = _login(client, samples, user)
    if token is not None and user.recovery_codes:
        body = {"code": user.recovery_codes.pop()}
        _timed(samples, "recovery_verify", lambda: client.post(RECOVERY_VERIFY, json=body, headers=_bearer(token)))


def _each(url: str, users: Sequence[MfaUser], concurrency: int, work: Any) -> None:
    def run(chunk: Sequence[MfaUser]) -> None:
        with httpx.Client(base_url=url, timeout=REQUEST_TIMEOUT, trust_env=False) as client:
            for user in chunk:
                work(client, user)

    chunks = [users[i::concurrency] for i in range(concurrency)]
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        for future in [pool.submit(run, chunk) for chunk in chunks if chunk]:
            future.result()


def _wait_for_next_step(users: Sequence[MfaUser], log: Any) -> None:
    """The measured verify must use a later TOTP step than the enrolment's (a replay is refused)."""
    last = max(user.enrolled_step for user in users)
    wait = (last + 1) * TOTP_PERIOD - time.time() + 0.5
    if wait > 0:
        log(f"mfa: waiting {wait:.1f} s for the next TOTP step (no code is used twice)")
        time.sleep(wait)


def run_mfa(url: str, users: Sequence[tuple[str, str]], *, concurrency: int, log: Any) -> list[dict[str, Any]]:
    """Prepare, measure; one row per request kind (benchmark's run-row shape, mode "sequence")."""
    people = [MfaUser(email, password) for email, password in users]
    with httpx.Client(base_url=url, timeout=REQUEST_TIMEOUT, trust_env=False) as client:
        prepare_user(client, people[0])  # MfaUnavailable here: nothing more is tried
    log(f"mfa: preparing {len(people)} users (signup, TOTP enroll + verify, recovery codes)")
    _each(url, people[1:], concurrency, prepare_user)
    _wait_for_next_step(people, log)
    samples = Samples()
    started = time.monotonic()
    _each(url, people, concurrency, lambda client, user: measure_user(client, samples, user))
    elapsed = time.monotonic() - started
    return [_row(step, samples, elapsed, concurrency) for step in STEPS]


def _row(step: str, samples: Samples, elapsed: float, concurrency: int) -> dict[str, Any]:
    ok = samples.latencies[step]
    requests = sum(samples.statuses[step].values())
    return {
        "target": "velro",
        "scenario": "mfa",
        "mode": "sequence",
        "step": step,
        "tool": "loadtest.mfa (httpx, closed loop)",
        "rate": None,
        "connections": concurrency,
        "duration_s": round(elapsed, 2),
        "requests": requests,
        "ok": len(ok),
        "success_rate": round(len(ok) / requests, 4) if requests else 0.0,
        "ok_rps": round(len(ok) / elapsed, 2) if elapsed else 0.0,
        "status_counts": dict(sorted(samples.statuses[step].items())),
        "errors": {},
        "error_count": requests - len(ok),
        "p50_ms": rounded(percentile(ok, 50)),
        "p90_ms": rounded(percentile(ok, 90)),
        "p99_ms": rounded(percentile(ok, 99)),
        "max_ms": rounded(max(ok) if ok else None),
    }
