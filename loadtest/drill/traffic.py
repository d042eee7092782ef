"""The drill's traffic: steady open-loop mixed requests (loadtest.loadgen), every answer recorded.

Request i is sent at t0 + i/rps, whatever happened before. The mix: 15% signups
(with the referral codes of earlier drill users, one in ten an unknown code),
20% logins, 20% refreshes, 45% GET /me. Each request is recorded with the
window (phase) and stage it was sent in, on the traffic clock (seconds since
the traffic started), so the evaluation can match it to the fault instants.
"""

from __future__ import annotations

import asyncio
import contextvars
import random
import secrets
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx

from loadtest.drill import DrillError, log
from loadtest.loadgen import (
    API,
    REQUEST_TIMEOUT,
    BenchUser,
    Pools,
    Sample,
    check_target,
    json_body,
    make_scenario,
    open_loop,
    timed_request,
)

# The traffic mix (weights): mostly token-authenticated reads, as in real use.
# Signups carry the background work: each writes a welcome email and, with a
# valid code, a referral to credit and the referrer's email.
MIX = (("signup", 0.15), ("login", 0.20), ("refresh", 0.20), ("me", 0.45))
UNKNOWN_CODE_SHARE = 0.1  # of signups: a well-formed code nobody owns (must be rejected, not credited)
CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
# Passwords from letters that occur nowhere in the drill's emails
# ("drill-<hex>-<n>@example.com"): Django's similarity validator compares
# character multisets, and a random password sharing the email's letters is
# now and then refused as "too similar to the email" (a 400 the drill would
# otherwise count against the service).
PASSWORD_ALPHABET = "ghjknqstuvwyzGHJKNQSTUVWYZ"


@dataclass
class Record:
    phase: str
    stage: str  # baseline / fault / recovery
    op: str
    t: float  # seconds since traffic start, when sent
    done: float  # seconds since traffic start, when answered (or given up)
    status: int  # 0: no answer
    latency_ms: float
    server_ms: float | None  # the server's own time (Server-Timing total): the rest is queueing + network
    retry_after: str | None
    error: str | None
    body: str | None = None  # the start of an error answer (>= 400)


@dataclass
class Signup:
    email: str
    status: int
    code_sent: str | None
    user_id: str | None = None
    phase: str = ""


_BOX: contextvars.ContextVar[dict | None] = contextvars.ContextVar("drill_response", default=None)


async def _capture_response(response: httpx.Response) -> None:
    """httpx response hook: the headers make_scenario's Sample does not keep."""
    box = _BOX.get()
    if box is not None:
        box["retry_after"] = response.headers.get("retry-after")
        if response.status_code >= 400:
            await response.aread()
            box["body"] = response.text[:300]


class Traffic:
    """Open-loop mixed traffic: request i is sent at t0 + i/rps, whatever happened before."""

    def __init__(self, url: str, *, rps: float, max_requests: int, seed: int) -> None:
        self.url = check_target(url)
        self.rps = rps
        self.max_requests = max_requests
        self.rng = random.Random(seed)
        self.run_id = secrets.token_hex(3)
        self.phase = "setup"
        self.stage = "setup"
        self.records: list[Record] = []
        self.signups: list[Signup] = []
        self.codes: list[str] = []
        self.unknown_codes: set[str] = set()
        self.skipped: Counter[str] = Counter()
        self.inflight: dict[int, float] = {}  # request number -> send time (traffic clock)
        self.sent = 0
        self.t0 = time.monotonic()
        self.t0_wall = time.time()
        self.client: httpx.AsyncClient | None = None
        self.pools: Pools | None = None
        self.ops: dict[str, Callable[[], Awaitable[Sample]]] = {}

    async def __aenter__(self) -> Traffic:
        self.client = httpx.AsyncClient(
            base_url=self.url,
            timeout=REQUEST_TIMEOUT,
            trust_env=False,
            headers={"User-Agent": "velro-drill/1"},
            limits=httpx.Limits(max_connections=400, max_keepalive_connections=50),
            event_hooks={"response": [_capture_response]},
        )
        self.pools = Pools(users=[], refresh=asyncio.Queue())
        self.ops = {name: make_scenario(name, self.client, self.pools) for name in ("login", "refresh", "me")}
        self.ops["signup"] = self.signup
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.client.aclose()

    def _code(self) -> str | None:
        if not self.codes:
            return None
        if self.rng.random() < UNKNOWN_CODE_SHARE:
            code = "".join(self.rng.choice(CROCKFORD) for _ in range(8))
            self.unknown_codes.add(code)
            return code
        return self.rng.choice(self.codes)

    async def signup(self) -> Sample:
        index = len(self.signups)
        user = BenchUser(
            email=f"drill-{self.run_id}-{index}@example.com",
            password="".join(secrets.choice(PASSWORD_ALPHABET) for _ in range(24)) + "#",
        )
        code = self._code()
        entry = Signup(email=user.email, status=0, code_sent=code, phase=self.phase)
        self.signups.append(entry)
        body: dict[str, Any] = {"email": user.email, "password": user.password}
        if code is not None:
            body["referral_code"] = code
        sample, response = await timed_request(self.client, "POST", f"{API}/signup", json=body)
        entry.status = sample.status
        data = json_body(response)
        if sample.status == 201:
            entry.user_id = (data.get("user") or {}).get("id")
            user.access_token = data.get("access_token") or ""
            self.pools.users.append(user)
            if isinstance(data.get("refresh_token"), str):
                self.pools.refresh.put_nowait((len(self.pools.users) - 1, data["refresh_token"]))
            own = (data.get("user") or {}).get("referral_code")
            if isinstance(own, str):
                self.codes.append(own)
        return sample

    async def seed(self, count: int) -> None:
        for _ in range(count):
            sample = await self.signup()
            if sample.status != 201:
                raise DrillError(f"seed signup failed: status {sample.status} {sample.error or ''}")

    def _pick(self) -> str:
        op = self.rng.choices([name for name, _ in MIX], weights=[weight for _, weight in MIX])[0]
        if op == "refresh" and self.pools.refresh.empty():
            # Nothing to refresh right now (tokens are used once): don't send a
            # request that would only wait client-side.
            self.skipped["refresh->me"] += 1
            op = "me"
        return op

    def oldest_in_flight(self) -> float:
        """Age (s) of the oldest request still waiting for its answer; 0 when none."""
        if not self.inflight:
            return 0.0
        return time.monotonic() - self.t0 - min(self.inflight.values())

    async def drained(self, *, below: float = 1.0, timeout: float = 30.0) -> float:
        """Wait (bounded) until the server keeps up again: no request older than `below` s
        is waiting. Returns the seconds waited."""
        started = time.monotonic()
        while self.oldest_in_flight() > below and time.monotonic() - started < timeout:
            await asyncio.sleep(0.1)
        return round(time.monotonic() - started, 2)

    async def _one(self) -> Sample:
        op = self._pick()
        phase, stage = self.phase, self.stage
        sent_at = time.monotonic() - self.t0
        number = self.sent = self.sent + 1
        self.inflight[number] = sent_at
        box: dict[str, Any] = {}
        _BOX.set(box)
        try:
            sample = await self.ops[op]()
        finally:
            del self.inflight[number]
        self.records.append(
            Record(
                phase=phase,
                stage=stage,
                op=op,
                t=round(sent_at, 3),
                done=round(sent_at + sample.latency_ms / 1000, 3),
                status=sample.status,
                latency_ms=round(sample.latency_ms, 2),
                server_ms=None if sample.server_ms is None else round(sample.server_ms, 2),
                retry_after=box.get("retry_after"),
                error=sample.error,
                body=box.get("body"),
            )
        )
        return sample

    async def run(self, stop: asyncio.Event) -> None:
        """Open-loop traffic at `rps` until `stop` is set (or the request cap)."""
        self.t0, self.t0_wall = time.monotonic(), time.time()
        result = await open_loop(self._one, rate=self.rps, max_requests=self.max_requests, stop=stop)
        if result.capped:
            log(f"request cap reached ({self.max_requests}): traffic stopped early")
