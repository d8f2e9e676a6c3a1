"""What happened lately: a bounded record of recent driver calls and of the
core's own events (reconciliations, restores, releases), with per-method
counters and latency histograms, for the admin API (nothing here touches the
network or the disk)."""

from __future__ import annotations

import bisect
import collections
import time
from typing import Any, Callable, Deque

import attrs

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
class EventLog:
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
