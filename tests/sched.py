"""A deterministic scheduler for races: concurrent core calls run one step at
a time, in an order the test chooses.

Every host call (``FakeHost.pause``) and every store write (``gated``)
is a point where the calling coroutine stops; ``step(i)`` lets the i-th
waiting one go on. Nothing runs in parallel, so an interleaving found by a
test can be replayed exactly.
"""

from __future__ import annotations

import random
from typing import Any, Callable

import attrs
from twisted.internet.defer import Deferred


@attrs.define
class Scheduler:
    waiting: list[tuple[str, "Deferred[None]"]] = attrs.field(factory=list)
    trace: list[str] = attrs.field(factory=list)
    only: Callable[[str], bool] = lambda label: True  # points not stopped at run freely

    def point(self, label: str, arg: Any = None) -> "Deferred[None] | None":
        if not self.only(label):
            return None
        d: Deferred[None] = Deferred()
        self.waiting.append((label, d))
        return d

    def labels(self) -> list[str]:
        return [label for label, _ in self.waiting]

    def step(self, index: int = 0) -> str:
        label, d = self.waiting.pop(index)
        self.trace.append(label)
        d.callback(None)
        return label

    def step_to(self, label: str) -> None:
        """Let the first coroutine waiting at ``label`` go on."""
        self.step(self.labels().index(label))

    def run(self, choose: Callable[[int], int], limit: int = 10_000) -> None:
        for _ in range(limit):
            if not self.waiting:
                return
            self.step(choose(len(self.waiting)))
        raise AssertionError(f"still running after {limit} steps: {self.labels()}")

    def run_randomly(self, seed: int) -> None:
        rng = random.Random(seed)
        self.run(lambda n: rng.randrange(n))


def gated(scheduler: Scheduler) -> Callable[..., "Deferred[Any]"]:
    """A store's ``run_in_thread`` whose every write first waits at ``store``
    (set it on the one store of a core: two stores must never share a directory)."""
    def run(f: Callable[..., Any], *args: Any) -> "Deferred[Any]":
        waiting = scheduler.point("store")
        if waiting is None:
            return run_sync(f, *args)
        return waiting.addCallback(lambda _: f(*args))
    return run


def run_sync(f: Callable[..., Any], *args: Any) -> "Deferred[Any]":
    from twisted.internet.defer import maybeDeferred
    return maybeDeferred(f, *args)
