"""One circuit breaker for every dependency the request path calls.

Used for the cache (velro.cache), the database (velro.db) and the Celery broker
(velro.tasks). After a failure the breaker is *open* for a cooldown: callers
skip the dependency and degrade at once instead of each paying a timeout.
Once the cooldown has run out the next call goes through again: a failure
reopens the breaker for another cooldown, a success ends the outage.

An *outage* runs from the first failure to the first success after it,
however many cooldowns it spans: it is logged once when it begins (and once
when it ends, if the breaker has a message for that), never per request.

The clock and the cooldown are injectable, so tests drive the breaker
without sleeping; a cooldown <= 0 never opens the breaker (outages are still
tracked and logged). Thread-safe: web workers run several threads.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable


class Breaker:
    def __init__(
        self,
        name: str,
        *,
        cooldown: Callable[[], float],
        logger: logging.Logger,
        opened: str = "",
        closed: str = "",
        clock: Callable[[], float] = time.monotonic,
        ignore: tuple[type[BaseException], ...] = (),
    ) -> None:
        """`opened` / `closed`: the WARNING lines logged when an outage begins and ends
        (str.format fields: {name}, {error}, {during}, {cooldown}); empty = not logged.
        `ignore`: failures that do not count (the caller's own refusal while open)."""
        self.name = name
        self.clock = clock
        self.logger = logger
        self.opened = opened
        self.closed = closed
        self.ignore = ignore
        self._cooldown = cooldown
        self._lock = threading.Lock()
        self._open_until = 0.0
        self._outage = False

    @property
    def cooldown(self) -> float:
        return self._cooldown()

    @property
    def open(self) -> bool:
        """True while calls should skip the dependency."""
        return self.clock() < self._open_until

    @property
    def outage(self) -> bool:
        """True from a failure until the next success."""
        return self._outage

    def trip(self, exc: BaseException | None = None, *, during: str = "") -> bool:
        """A call failed: open for one cooldown. True when this failure begins an
        outage (its `opened` line is then logged, once per outage)."""
        if exc is not None and isinstance(exc, self.ignore):
            return False
        cooldown = self.cooldown
        with self._lock:
            self._open_until = self.clock() + cooldown
            first = not self._outage
            self._outage = True
        if first and self.opened:
            self.logger.warning(self._message(self.opened, exc, during, cooldown))
        return first

    def recover(self) -> bool:
        """A call succeeded: end the outage. True when one was going on (its
        `closed` line is then logged). Costs one attribute read when healthy."""
        if not self._outage:
            return False
        with self._lock:
            if not self._outage:
                return False
            self._outage = False
            self._open_until = 0.0
        if self.closed:
            self.logger.warning(self._message(self.closed, None, "", self.cooldown))
        return True

    def reset(self) -> None:
        """Closed, no outage (tests)."""
        with self._lock:
            self._open_until = 0.0
            self._outage = False

    def _message(self, template: str, exc: BaseException | None, during: str, cooldown: float) -> str:
        error = exc.__class__.__name__ if exc is not None else "failure"
        return template.format(name=self.name, error=error, during=during, cooldown=cooldown)
