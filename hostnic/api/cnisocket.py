"""The CNI endpoint: the ``hostnic-cni`` shim's one request per connection.

A frame is a 4-byte big-endian length and that many bytes of JSON. The shim
sends the namespace it hands over as two descriptors (the namespace, and a
netlink socket made inside it) with the frame's first bytes; Twisted
delivers them before those bytes. The answer is one frame,
``{"exit": N, "output": {...}}``, and the connection closes.

Guards as the HTTP endpoints have them: a frame larger than ``MAX_FRAME`` is
refused when its length arrives, a request must arrive whole within the
deadline, at most ``max_connections`` are open, more than two descriptors
are closed at once. A call runs to its end even if the shim goes away, and
a stop waits for the calls under way (``drain``).
"""

from __future__ import annotations

import json
import os
import struct
from typing import Any, Callable, Protocol as Interface

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IFileDescriptorReceiver
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from hostnic import strictjson
from hostnic.api.cni import DECODING_FAILURE, TRY_AGAIN_LATER, CNIAPI, CNIError, error_json
from hostnic.strictjson import NotJSON

HEADER = struct.Struct(">I")
MAX_FRAME = 1 << 20  # a network configuration with its prevResult is a few KiB
MAX_FDS = 2


class Admission(Interface):
    def admit(self, run: Callable[[], None]) -> None: ...
    def release(self, result: Any = None) -> None: ...


def frame(value: Any) -> bytes:
    data = json.dumps(value, allow_nan=False).encode()
    return HEADER.pack(len(data)) + data


@implementer(IFileDescriptorReceiver)
class CNIConnection(Protocol):
    factory: "CNIFactory"
    transport: Any

    def __init__(self) -> None:
        self.buffer = b""
        self.fds: list[int] = []
        self.started = False
        self.deadline: Any = None

    def connectionMade(self) -> None:
        factory = self.factory
        if factory.draining or len(factory.connections) >= factory.max_connections:
            # An answer, not a dropped connection: the plugin must tell a
            # DEL hostnic did not handle from one it did.
            why = ("hostnic is stopping" if factory.draining
                   else "too many CNI calls at once")
            self.started = True
            self.transport.write(frame({"exit": 1, "output": error_json("1.1.0", CNIError(
                TRY_AGAIN_LATER, f"{why}; try again"))}))
            self.transport.loseConnection()
            return
        factory.connections.add(self)
        self.deadline = factory.reactor.callLater(factory.request_seconds,
                                                  self.transport.loseConnection)

    def fileDescriptorReceived(self, fd: int) -> None:
        if self.started or len(self.fds) >= MAX_FDS:
            os.close(fd)  # not asked for: never held
        else:
            self.fds.append(fd)

    def dataReceived(self, data: bytes) -> None:
        if self.started:
            return
        self.buffer += data
        if len(self.buffer) < HEADER.size:
            return
        (length,) = HEADER.unpack_from(self.buffer)
        if length > MAX_FRAME:
            self._answer(1, error_json("1.1.0", CNIError(
                DECODING_FAILURE, f"the request is larger than {MAX_FRAME} bytes")))
            return
        if len(self.buffer) < HEADER.size + length:
            return
        raw = self.buffer[HEADER.size:HEADER.size + length]
        self.started, self.buffer = True, b""
        self._stop_deadline()
        try:
            request = strictjson.loads(raw)
        except NotJSON:
            self._answer(1, error_json("1.1.0", CNIError(DECODING_FAILURE,
                                                         "the request is not JSON")))
            return
        fds, self.fds = self.fds, []
        admission = self.factory.admission
        if admission is None:
            self._run(request, fds)
        else:  # (a place among the driver's calls under way; see GuardedSite.admit)
            admission.admit(lambda: self._run(request, fds))

    def _run(self, request: Any, fds: list[int]) -> None:
        if not self.transport.connected:
            # Its plugin left while it waited: it never begins, as if hostnic
            # had stopped before reading it (the runtime asks again).
            for fd in fds:
                os.close(fd)
            self._release()
            return
        # The call runs to its end whatever becomes of the connection.
        call = Deferred.fromCoroutine(self.factory.api.handle(request, fds))
        self.factory.calls.add(call)
        call.addBoth(self._done, call)

    def _release(self) -> None:
        if self.factory.admission is not None:
            self.factory.admission.release()

    def _done(self, answer: Any, call: "Deferred[Any]") -> None:
        self.factory.calls.discard(call)
        self._release()
        if isinstance(answer, Failure):  # (handle answers every error itself)
            answer = (1, error_json("1.1.0", CNIError(199, "hostnic failed to process "
                                                           "the request")))
        self._answer(*answer)
        self.factory.idle_check()

    def _answer(self, status: int, output: dict[str, Any]) -> None:
        self.started = True
        if self.transport.connected:
            self.transport.write(frame({"exit": status, "output": output}))
            self.transport.loseConnection()

    def _stop_deadline(self) -> None:
        if self.deadline is not None and self.deadline.active():
            self.deadline.cancel()
        self.deadline = None

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._stop_deadline()
        for fd in self.fds:  # descriptors of a request that never came whole
            os.close(fd)
        self.fds = []
        self.factory.connections.discard(self)


class CNIFactory(Factory[CNIConnection]):
    def __init__(self, api: CNIAPI, reactor: Any, max_connections: int = 64,
                 request_seconds: float = 30.0, admission: Admission | None = None) -> None:
        """``admission``: where the calls take a place among others under way
        (the driver's site: CNI calls and dockerd's share its limit)."""
        self.admission = admission
        self.api = api
        self.reactor = reactor
        self.max_connections = max_connections
        self.request_seconds = request_seconds
        self.connections: set[CNIConnection] = set()
        self.calls: set[Deferred[Any]] = set()
        self.draining = False
        self._drained: list[Deferred[None]] = []

    def buildProtocol(self, addr: Any) -> CNIConnection:
        connection = CNIConnection()
        connection.factory = self
        return connection

    def drain(self) -> "Deferred[None]":
        """Take no new request; fires when the calls under way are answered."""
        self.draining = True
        if not self.calls:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._drained.append(waiter)
        return waiter

    def idle_check(self) -> None:
        if self.draining and not self.calls:
            waiters, self._drained = self._drained, []
            for waiter in waiters:
                waiter.callback(None)
