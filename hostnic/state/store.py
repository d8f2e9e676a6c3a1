"""Crash-safe persistence of the core's state: a snapshot and a journal.

``state.json`` holds the whole state and the generation *g* of the journal
that continues it; ``journal.<g>`` holds one framed record (length, CRC-32,
JSON) per change since. A save appends the records of what changed, every
byte of them or an error, and fdatasyncs the journal: one small append and
one flush per group of changes instead of a rewrite, a rename and two fsyncs.
Every ``compact_every`` records the state is compacted: a new snapshot (temp
file, fsync, rename, directory fsync) names generation *g+1*; its journal is
created, and its directory entry made durable, before it is first used.

A SIGKILL or power cut at any instant leaves the old or the new state. A
record cut short by a crash is the journal's last bytes and was never
acknowledged (its fdatasync had not returned): reading stops there. A damaged
record with more after it is damage, and the start stops with one sentence.
After a failed append the journal is not appended to again (its tail may be
torn): the next save writes a snapshot and starts a new journal.
"""

from __future__ import annotations

import errno
import os
import struct
import zlib
from typing import Any, Callable, Protocol

import attrs
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from hostnic.errors import StoreError
from hostnic.state.fileformat import (StateFileError, apply_record, changes, decode_snapshot, encode,
                               encode_record)
from hostnic.state.model import State

RunInThread = Callable[..., "Deferred[Any]"]
STATE_FILE = "state.json"
TEMP_PREFIX = STATE_FILE + ".tmp."
JOURNAL_PREFIX = "journal."
FRAME = struct.Struct(">II")  # payload length, CRC-32 of the payload
COMPACT_EVERY = 1000  # journal records between snapshots


class FileSystem(Protocol):
    """The calls a save makes (``os`` itself); tests inject faults here."""

    def open(self, path: str, flags: int, mode: int = 0o777) -> int: ...
    def write(self, fd: int, data: bytes | memoryview) -> int: ...
    def fsync(self, fd: int) -> None: ...
    def fdatasync(self, fd: int) -> None: ...
    def ftruncate(self, fd: int, length: int) -> None: ...
    def fstat(self, fd: int) -> os.stat_result: ...
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


def fsync_directory(fs: Any, directory: str) -> None:
    fd = fs.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fs.fsync(fd)
    finally:
        fs.close(fd)


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
    fsync_directory(fs, directory)


def frame(record: bytes) -> bytes:
    return FRAME.pack(len(record), zlib.crc32(record)) + record


def unframe(raw: bytes) -> tuple[list[bytes], bool]:
    """The records of a journal, and whether its tail was cut short (a record
    a crash interrupted). StateFileError if a damaged record has more after it."""
    records: list[bytes] = []
    offset = 0
    while offset < len(raw):
        if offset + FRAME.size > len(raw):
            return records, True
        length, crc = FRAME.unpack_from(raw, offset)
        start, end = offset + FRAME.size, offset + FRAME.size + length
        if end > len(raw):
            return records, True
        payload = raw[start:end]
        if zlib.crc32(payload) != crc:
            if end == len(raw):
                return records, True  # the last record, cut short mid-payload
            raise StateFileError(f"record {len(records) + 1} of the journal is damaged "
                                 f"and more follows it")
        records.append(payload)
        offset = end
    return records, False


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
    share one flush instead of queueing for one each."""

    directory: str
    run_in_thread: RunInThread
    fs: Any = attrs.field(default=os)  # a FileSystem
    compact_every: int = COMPACT_EVERY
    writes: int = attrs.field(default=0, init=False)
    _loaded: bool = attrs.field(default=False, init=False)
    _durable: State = attrs.field(factory=State, init=False)  # what the disk holds
    _generation: int = attrs.field(default=0, init=False)
    _journal: int | None = attrs.field(default=None, init=False)  # its descriptor
    _records: int = attrs.field(default=0, init=False)
    _snapshot_next: bool = attrs.field(default=False, init=False)
    _pending: list[_Waiter] = attrs.field(factory=list, init=False)
    _snapshot: Callable[[], State] | None = attrs.field(default=None, init=False)
    _writing: bool = attrs.field(default=False, init=False)
    _close_when_idle: bool = attrs.field(default=False, init=False)
    log = Logger()

    @property
    def path(self) -> str:
        return os.path.join(self.directory, STATE_FILE)

    def journal_path(self, generation: int | None = None) -> str:
        return os.path.join(self.directory, JOURNAL_PREFIX +
                            str(self._generation if generation is None else generation))

    # -- reading, at start-up ---------------------------------------------

    def load(self) -> State:
        """Read the state at start-up (synchronously: nothing serves yet), and
        clear what an interrupted save or compaction left behind."""
        try:
            os.makedirs(self.directory, mode=0o700, exist_ok=True)
            for name in os.listdir(self.directory):
                if name.startswith(TEMP_PREFIX):
                    # A snapshot that died before its rename: the old file is intact.
                    os.unlink(os.path.join(self.directory, name))
        except OSError as e:
            raise StoreError(f"hostnic cannot read its state in {self.directory}: "
                             f"{e.strerror or e}") from None
        state, generation, records, torn = self.read()
        for name in os.listdir(self.directory):  # journals a compaction no longer needs
            if name.startswith(JOURNAL_PREFIX) and name != JOURNAL_PREFIX + str(generation):
                os.unlink(os.path.join(self.directory, name))
        self._durable, self._generation, self._records = state, generation, records
        self._loaded = True
        if torn:
            self.log.warn("the journal's last record was cut short by a crash before it "
                          "was acknowledged; it is ignored")
            self._snapshot_next = True  # never append after a torn tail
        return state

    def read(self) -> tuple[State, int, int, bool]:
        """What the disk holds, changing nothing: the state, its journal's
        generation, how many records it has, and whether its tail is torn."""
        try:
            state, generation = self._read_snapshot()
            raw = self._read(self.journal_path(generation))
        except OSError as e:
            raise StoreError(f"hostnic cannot read its state in {self.directory}: "
                             f"{e.strerror or e}") from None
        try:
            records, torn = unframe(raw or b"")
            for i, record in enumerate(records):
                state = apply_record(state, record, f"journal record {i + 1}")
        except StateFileError as e:
            raise unreadable(self.journal_path(generation), str(e)) from None
        return state, generation, len(records), torn

    @staticmethod
    def _read(path: str) -> bytes | None:
        try:
            with open(path, "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None

    def _read_snapshot(self) -> tuple[State, int]:
        raw = self._read(self.path)
        if raw is None:
            return State(), 0
        try:
            return decode_snapshot(raw)
        except StateFileError as e:
            raise unreadable(self.path, str(e)) from None

    # -- writing ------------------------------------------------------------

    async def save(self, snapshot: Callable[[], State],
                   on_failure: Callable[[], None] = lambda: None) -> None:
        """Durably write the state as it is when the write starts.

        On failure every waiter of that write has its ``on_failure`` run
        before the next write takes its snapshot, so an undone change is never
        written, and each gets a StoreError.

        Only the store that loaded the directory saves to it: what it writes
        is the difference from what it read, in the journal it read.
        """
        if not self._loaded:
            raise RuntimeError(f"the store of {self.directory} saves before it has loaded")
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
                    await self.run_in_thread(self._persist, self._snapshot())
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
            if self._close_when_idle:
                self.close()

    def _persist(self, state: State) -> None:
        """Make ``state`` durable (in the store's thread, one write at a time)."""
        records = changes(self._durable, state)
        if not records:
            return
        if self._snapshot_next or self._records + len(records) > self.compact_every:
            self._compact(state)
        else:
            self._append([encode_record(r) for r in records])
        self._durable = state

    def _append(self, records: list[bytes]) -> None:
        fs = self.fs
        if self._journal is None:
            self._journal = self._open_journal()
        end = fs.fstat(self._journal).st_size
        try:
            write_all(fs, self._journal, b"".join(frame(r) for r in records))
            fs.fdatasync(self._journal)
        except Exception:
            try:  # take back what a full disk let through, so nothing is torn
                fs.ftruncate(self._journal, end)
            except OSError:
                self._snapshot_next = True  # the tail may be torn: never append after it
            raise
        self._records += len(records)

    def _open_journal(self) -> int:
        fs, path = self.fs, self.journal_path()
        flags = os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC
        try:
            fd: int = fs.open(path, flags | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return int(fs.open(path, flags))  # the one load read
        try:
            fsync_directory(fs, self.directory)  # its name must outlive a crash too
        except BaseException:
            fs.close(fd)
            raise
        return fd

    def _compact(self, state: State) -> None:
        """A snapshot naming the next generation, then the old journal goes."""
        old = self.journal_path()
        write_atomically(self.path, encode(state, self._generation + 1), self.fs)
        if self._journal is not None:
            self.fs.close(self._journal)
            self._journal = None
        self._generation += 1
        self._records = 0
        self._snapshot_next = False
        try:
            self.fs.unlink(old)
        except OSError:
            pass  # gone already, or removed at the next start

    def close(self) -> None:
        """Close the journal, once no write runs: a write in its thread must
        never meet a closed descriptor, or one the number was reused for."""
        self._close_when_idle = self._writing
        if not self._writing and self._journal is not None:
            self.fs.close(self._journal)
            self._journal = None
