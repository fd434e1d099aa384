"""Logging downloads the client cut short: once a minute per kind, at debug otherwise.

A client that goes away mid-body is normal (a device moved, a pull was cancelled), and a
hostile one can do it in a loop: a traceback per abort would flood the log.
"""

import logging
import time
from collections.abc import Callable
from typing import Final

__all__ = ("ABORT_LOG_EVERY_S", "AbortLog")
log = logging.getLogger(__name__)

ABORT_LOG_EVERY_S: Final = 60.0


class AbortLog:
    """Counts aborted responses per kind (the exception's class); logs a kind at most once per period."""

    def __init__(self, *, every_s: float = ABORT_LOG_EVERY_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.every_s = every_s
        self._clock = clock
        self._last: dict[str, float] = {}
        self._since: dict[str, int] = {}

    def note(self, error: BaseException, what: str) -> None:
        """One response cut short by `error` while sending `what`."""
        kind = type(error).__name__  # a closed set: the connection and timeout errors
        now = self._clock()
        self._since[kind] = self._since.get(kind, 0) + 1
        last = self._last.get(kind)
        if last is None or now - last >= self.every_s:
            self._last[kind] = now
            count, self._since[kind] = self._since[kind], 0
            log.warning(
                "%d response(s) cut short by %s in the last %.0f s (latest: %s: %s); logged once a minute",
                count,
                kind,
                self.every_s,
                what,
                error,
            )
        else:
            log.debug("response cut short by %s: %s: %s", kind, what, error)
