"""Background retries for work nobody will ask for again.

dockerd ignores DeleteEndpoint's errors and never repeats the call, and a link
event comes once: if restoring a NIC then fails (a full disk, a netlink
error), hostnic tries again itself, after a delay that doubles per key up to
``max_delay``, until it works.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable

import attrs
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from hostnic.errors import HostnicError

Work = Callable[[], Awaitable[None]]


@attrs.define
class Retrier:
    reactor: Any  # IReactorTime; None: never retry (unit tests that do not want it)
    first: float = 1.0
    max_delay: float = 60.0
    _delays: dict[str, float] = attrs.field(factory=dict)
    _calls: dict[str, Any] = attrs.field(factory=dict)
    log = Logger()

    def schedule(self, key: str, work: Work) -> None:
        if self.reactor is None or key in self._calls:
            return
        delay = min(self.max_delay, self._delays.get(key, self.first / 2) * 2)
        self._delays[key] = delay
        self._calls[key] = self.reactor.callLater(delay, self._run, key, work)

    def _run(self, key: str, work: Work) -> None:
        self._calls.pop(key, None)

        def failed(failure: Failure) -> None:
            if not failure.check(HostnicError):  # those reschedule themselves
                self.log.failure("retrying {key} failed unexpectedly", failure, key=key)

        async def run() -> None:
            await work()

        Deferred.fromCoroutine(run()).addErrback(failed)

    def succeeded(self, key: str) -> None:
        self._delays.pop(key, None)
        call = self._calls.pop(key, None)
        if call is not None and call.active():
            call.cancel()

    def pending(self) -> list[str]:
        return sorted(self._calls)

    def stop(self) -> None:
        for call in self._calls.values():
            if call.active():
                call.cancel()
        self._calls.clear()
