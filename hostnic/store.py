"""Crash-safe persistence of the core's state: one JSON file, replaced atomically.

Each save writes the whole state to a temp file in the same directory (every
byte of it, or an error: a short write on a full disk is never taken for a
complete one), fsyncs it, renames it over ``state.json`` and fsyncs the
directory. A SIGKILL or power cut at any instant leaves the old or the new
state; a failed save leaves the old file and no temp file behind.
"""

from __future__ import annotations

import errno
import os
from typing import Any, Callable, Protocol

import attrs
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from hostnic.errors import StoreError
from hostnic.model import State
from hostnic.statefile import StateFileError, decode, encode

RunInThread = Callable[..., "Deferred[Any]"]
STATE_FILE = "state.json"
TEMP_PREFIX = STATE_FILE + ".tmp."


class FileSystem(Protocol):
    """The calls a save makes (``os`` itself); tests inject faults here."""

    def open(self, path: str, flags: int, mode: int = 0o777) -> int: ...
    def write(self, fd: int, data: bytes | memoryview) -> int: ...
    def fsync(self, fd: int) -> None: ...
    def close(self, fd: int) -> None: ...
    def replace(self, source: str, target: str) -> None: ...
    def unlink(self, path: str) -> None: ...


def write_all(fs: Any, fd: int, payload: bytes) -> None:
    view = memoryview(payload)
    while view:
        written = fs.write(fd, view)
        if written <= 0:  # a filesystem that accepts nothing without saying why
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        view = view[written:]


def write_atomically(path: str, payload: bytes, fs: Any = os) -> None:
    directory = os.path.dirname(path) or "."
    temp = f"{os.path.join(directory, TEMP_PREFIX)}{os.getpid()}"
    fd = fs.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        try:
            write_all(fs, fd, payload)
            fs.fsync(fd)
        finally:
            fs.close(fd)
        fs.replace(temp, path)
    except BaseException:
        try:
            fs.unlink(temp)
        except OSError:
            pass
        raise
    dir_fd = fs.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fs.fsync(dir_fd)
    finally:
        fs.close(dir_fd)


def unreadable(path: str, problem: str) -> StoreError:
    return StoreError(
        f"the state file {path} is damaged ({problem}); hostnic left it as it is and "
        f"will not start without the record of the NICs it lent: restore the file, or "
        f"move it aside to start with no state (then check the NICs it held by hand)")


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
    fs: Any = attrs.field(default=os)  # a FileSystem
    writes: int = attrs.field(default=0, init=False)
    _pending: list[_Waiter] = attrs.field(factory=list, init=False)
    _snapshot: Callable[[], State] | None = attrs.field(default=None, init=False)
    _writing: bool = attrs.field(default=False, init=False)
    log = Logger()

    @property
    def path(self) -> str:
        return os.path.join(self.directory, STATE_FILE)

    def load(self) -> State:
        """Read the state at start-up (synchronously: nothing serves yet)."""
        try:
            os.makedirs(self.directory, mode=0o700, exist_ok=True)
            for name in os.listdir(self.directory):
                if name.startswith(TEMP_PREFIX):
                    # A save that died before its rename: the old file is intact.
                    os.unlink(os.path.join(self.directory, name))
            with open(self.path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            return State()
        except OSError as e:
            raise StoreError(f"hostnic cannot read its state in {self.directory}: "
                             f"{e.strerror or e}") from None
        try:
            return decode(raw)
        except StateFileError as e:
            raise unreadable(self.path, str(e)) from None

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
                    payload = encode(self._snapshot())
                    await self.run_in_thread(write_atomically, self.path, payload, self.fs)
                    self.writes += 1
                except Exception as e:  # every waiter must hear back, whatever broke
                    self.log.error("saving state failed: {error}", error=e)
                    for waiter in reversed(batch):
                        waiter.on_failure()
                    error = StoreError(f"hostnic could not save its state in "
                                       f"{self.directory}: {getattr(e, 'strerror', None) or e}; "
                                       f"nothing was changed")
                    for waiter in batch:
                        waiter.done.errback(error)
                else:
                    for waiter in batch:
                        waiter.done.callback(None)
        finally:
            self._writing = False
