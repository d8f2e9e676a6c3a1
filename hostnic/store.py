"""Crash-safe persistence of the core's state: one JSON file, replaced atomically.

Each save writes a temp file in the same directory, fsyncs it, renames it over
``state.json`` and fsyncs the directory, so a SIGKILL or power cut at any
instant leaves either the old or the new state, never a mix.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable

import attrs
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from hostnic.errors import StoreError
from hostnic.model import State, state_from_json, state_to_json

RunInThread = Callable[..., "Deferred[Any]"]


def write_atomically(path: str, payload: bytes) -> None:
    directory = os.path.dirname(path) or "."
    temp = f"{path}.tmp.{os.getpid()}"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, payload)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temp, path)
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


@attrs.define
class _Waiter:
    done: "Deferred[None]"
    on_failure: Callable[[], None]


@attrs.define
class StateStore:
    """Group commit: saves that arrive while a write is running are all served
    by the next single write of the then-current state, so concurrent requests
    share one fsync instead of queueing for one each."""

    directory: str
    run_in_thread: RunInThread
    _pending: list[_Waiter] = attrs.field(factory=list, init=False)
    _snapshot: Callable[[], State] | None = attrs.field(default=None, init=False)
    _writing: bool = attrs.field(default=False, init=False)
    log = Logger()

    @property
    def path(self) -> str:
        return os.path.join(self.directory, "state.json")

    def load(self) -> State:
        """Read the state at start-up (synchronously: nothing serves yet)."""
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        for name in os.listdir(self.directory):
            if name.startswith("state.json.tmp."):
                # A save that died before its rename: the old file is intact.
                os.unlink(os.path.join(self.directory, name))
        try:
            with open(self.path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            return State()
        try:
            return state_from_json(json.loads(raw))
        except (ValueError, KeyError, TypeError) as e:
            raise StoreError(f"state file {self.path} is unreadable: {e}") from e

    async def save(self, snapshot: Callable[[], State],
                   on_failure: Callable[[], None] = lambda: None) -> None:
        """Durably write the state as it is when the write starts.

        On failure every waiter of that write has its ``on_failure`` run
        before the next write takes its snapshot, so an undone change is never
        written, and each gets a StoreError.
        """
        waiter = _Waiter(Deferred(), on_failure)
        self._pending.append(waiter)
        self._snapshot = snapshot
        if not self._writing:
            Deferred.fromCoroutine(self._write_loop())
        await waiter.done

    async def _write_loop(self) -> None:
        self._writing = True
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                assert self._snapshot is not None
                try:
                    payload = json.dumps(state_to_json(self._snapshot()), indent=1,
                                         sort_keys=True).encode()
                    await self.run_in_thread(write_atomically, self.path, payload)
                except Exception as e:  # every waiter must hear back, whatever broke
                    self.log.error("saving state failed: {error}", error=e)
                    for waiter in reversed(batch):
                        waiter.on_failure()
                    error = StoreError(f"hostnic could not save its state in "
                                       f"{self.directory}: {getattr(e, 'strerror', None) or e}")
                    for waiter in batch:
                        waiter.done.errback(error)
                else:
                    for waiter in batch:
                        waiter.done.callback(None)
        finally:
            self._writing = False
