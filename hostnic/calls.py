"""A bounded record of recent driver calls and reconciliations, with
per-method counters and latency histograms, for the logs and the admin API
(nothing here touches the network or the disk)."""

from __future__ import annotations

import bisect
import collections
import contextlib
import contextvars
import time
from typing import Any, Callable, Deque, Iterator

import attrs
from twisted.logger import Logger

# Upper bounds of the latency buckets, in seconds (Prometheus convention).
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


@attrs.define
class MethodStats:
    count: int = 0
    errors: int = 0
    total_seconds: float = 0.0
    # buckets[i] counts calls <= BUCKETS[i] (not cumulative); the last slot is +Inf.
    buckets: list[int] = attrs.field(factory=lambda: [0] * (len(BUCKETS) + 1))

    def add(self, seconds: float, failed: bool) -> None:
        self.count += 1
        self.errors += failed
        self.total_seconds += seconds
        self.buckets[bisect.bisect_left(BUCKETS, seconds)] += 1

    def cumulative(self) -> list[tuple[str, int]]:
        """``(le, count)`` pairs as Prometheus wants them, ending with +Inf."""
        pairs, running = [], 0
        for bound, count in zip([*map(str, BUCKETS), "+Inf"], self.buckets):
            running += count
            pairs.append((bound, running))
        return pairs


@attrs.define
class CallLog:
    size: int = 256
    wall_clock: Callable[[], float] = time.time
    recent: Deque[dict[str, Any]] = attrs.field(init=False)
    stats: dict[str, MethodStats] = attrs.field(factory=dict)

    def __attrs_post_init__(self) -> None:
        self.recent = collections.deque(maxlen=self.size)

    def record(self, method: str, duration: float, error: str | None) -> None:
        """A driver call; ``method`` must come from a bounded set of names."""
        self.stats.setdefault(method, MethodStats()).add(duration, error is not None)
        self.recent.append({"at": self.wall_clock(), "kind": "call", "method": method,
                            "seconds": round(duration, 6), "ok": error is None,
                            "error": error})

    def note(self, kind: str, **fields: Any) -> None:
        """Anything else worth seeing in ``events.recent`` (reconciliations)."""
        self.recent.append({"at": self.wall_clock(), "kind": kind, **fields})

    def last(self, limit: int) -> list[dict[str, Any]]:
        return list(self.recent)[-limit:] if limit > 0 else []


# -- one log line per call -------------------------------------------------

_story: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar(
    "hostnic_story", default=None)
_log = Logger(namespace="hostnic.core")


def narrate(text: str) -> None:
    """Say what the core did. During a driver call it goes into that call's
    one log line (a lifecycle used to cost a dozen log events); otherwise, as
    for work done in the background, it is logged on its own."""
    story = _story.get()
    if story is None:
        _log.info("{text}", text=text)
    else:
        story.append(text)


@contextlib.contextmanager
def telling() -> Iterator[list[str]]:
    """Collect what ``narrate`` says while a call is served."""
    story: list[str] = []
    token = _story.set(story)
    try:
        yield story
    finally:
        _story.reset(token)


def untold() -> None:
    """Background work started during a call tells its own story: call this
    first thing in its coroutine (which runs in a copy of the call's context)."""
    _story.set(None)
