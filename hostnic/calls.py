"""A bounded record of recent driver calls and per-method counters, kept for
the logs and the admin API (nothing here touches the network or the disk)."""

from __future__ import annotations

import collections
import time
from typing import Any, Callable, Deque

import attrs


@attrs.define
class MethodStats:
    count: int = 0
    errors: int = 0
    total_seconds: float = 0.0


@attrs.define
class CallLog:
    size: int = 256
    wall_clock: Callable[[], float] = time.time
    recent: Deque[dict[str, Any]] = attrs.field(init=False)
    stats: dict[str, MethodStats] = attrs.field(factory=dict)

    def __attrs_post_init__(self) -> None:
        self.recent = collections.deque(maxlen=self.size)

    def record(self, method: str, duration: float, error: str | None) -> None:
        stats = self.stats.setdefault(method[:100], MethodStats())
        stats.count += 1
        stats.total_seconds += duration
        if error is not None:
            stats.errors += 1
        self.recent.append({"at": self.wall_clock(), "method": method[:100],
                            "seconds": duration, "error": error})
