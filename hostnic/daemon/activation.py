"""Serving on a unix socket that systemd created and owns.

Twisted's ``unix.Port`` treats an adopted socket as its own (seen in 22.4 and
26.10): ``startListening`` chmods the path to the port's mode (0666 unless
told), overriding ``SocketMode=``; closing calls ``shutdown(2)``, which also
kills systemd's copy of the listening socket; ``connectionLost`` unlinks the
path. After one stop of the service the next activation finds no socket.
``AdoptedUnixPort`` keeps the mode, closes only this process's descriptor and
leaves the path alone. It relies on two Twisted internals
(``_fromListeningDescriptor`` and ``_shouldShutdown``), pinned by
tests/test_activation.py.
"""

from __future__ import annotations

import os
import socket
import stat
from typing import Any

import attrs
from twisted.internet import fdesc, tcp, unix
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.endpoints import AdoptedStreamServerEndpoint, serverFromString
from twisted.internet.interfaces import IListeningPort, IProtocolFactory, IStreamServerEndpoint
from zope.interface import implementer


class AdoptedUnixPort(unix.Port):
    def startListening(self) -> None:
        try:
            # chmod to the mode the socket already has: a no-op by design.
            self.mode = stat.S_IMODE(os.stat(self._bindPath).st_mode)
        except OSError:
            pass
        super().startListening()
        # As tcp.Port does for adopted sockets: close, never shutdown(2), so
        # the listening socket systemd holds keeps accepting.
        self._shouldShutdown = False

    def connectionLost(self, reason: Any) -> None:
        # Skip unix.Port's unlink: the path belongs to systemd.
        tcp.Port.connectionLost(self, reason)


@implementer(IStreamServerEndpoint)
@attrs.define
class AdoptedUnixEndpoint:
    reactor: Any
    fileno: int
    _used: bool = False

    def listen(self, factory: IProtocolFactory) -> "Deferred[IListeningPort]":
        if self._used:
            return fail(RuntimeError("this inherited socket is already listening"))
        self._used = True
        try:
            fdesc.setNonBlocking(self.fileno)
            port = AdoptedUnixPort._fromListeningDescriptor(self.reactor, self.fileno, factory)
            port.startListening()
            os.close(self.fileno)  # the port holds its own duplicate
        except BaseException:
            return fail()
        return succeed(port)


def server_endpoint(reactor: Any, description: str) -> IStreamServerEndpoint:
    """``serverFromString``, with systemd's unix sockets served by AdoptedUnixPort."""
    endpoint: IStreamServerEndpoint = serverFromString(reactor, description)
    if (isinstance(endpoint, AdoptedStreamServerEndpoint)
            and endpoint.addressFamily == socket.AF_UNIX):
        return AdoptedUnixEndpoint(reactor, endpoint.fileno)
    return endpoint
