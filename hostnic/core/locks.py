"""One serialisation point per key (a NIC, an endpoint, a network).

A lock exists only while someone holds or waits for it, so the map stays as
small as the work in flight. Locks are not re-entrant: a flow takes each key
once, endpoint before NIC, which is the only order used.
"""

from __future__ import annotations

import contextlib
from typing import AsyncIterator

import attrs
from twisted.internet.defer import Deferred, DeferredLock, succeed


@attrs.define
class KeyedLocks:
    _locks: dict[str, DeferredLock] = attrs.field(factory=dict)
    _idle: list["Deferred[None]"] = attrs.field(factory=list)

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock = self._locks.setdefault(key, DeferredLock())
        await lock.acquire()
        try:
            yield
        finally:
            # release() may hand the lock to a waiter, which can run to its own
            # release before we look again: forget the lock only if it is idle.
            lock.release()
            if not lock.locked and not lock.waiting and self._locks.get(key) is lock:
                del self._locks[key]
                if not self._locks:
                    waiters, self._idle = self._idle, []
                    for waiter in waiters:
                        waiter.callback(None)

    def idle(self) -> "Deferred[None]":
        """Fires once no lock is held or waited for: no work is under way."""
        if not self._locks:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._idle.append(waiter)
        return waiter

    def busy(self, key: str) -> bool:
        return key in self._locks

    def __len__(self) -> int:
        return len(self._locks)
