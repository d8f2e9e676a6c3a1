"""One hostnic per host. Two daemons (the .deb's service and the managed
Docker plugin, say) would each lend the same NIC. The holder binds an
abstract unix socket: its names live per network namespace, which is what
"a host" is to hostnic (both deployments share the host's), whatever their
mount namespaces or state directories. The kernel drops the name when the
holder dies, however it dies, so a crash never leaves a stale lock.

The holder listens on it (for the life of the process: stopping early would
let a second start while the first still restores) and tells a second
hostnic who it is."""

from __future__ import annotations

import errno
import os
import socket
from typing import Any

from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Factory, Protocol

from hostnic.errors import HostnicError

NAME = "hostnic/lends-this-host"
DEPLOYMENT_VARIABLE = "HOSTNIC_DEPLOYMENT"  # set by the systemd unit and the plugin


def describe_self(socket_description: str, state_dir: str) -> str:
    deployment = os.environ.get(DEPLOYMENT_VARIABLE) or "twistd hostnic"
    return (f"{deployment} (pid {os.getpid()}), driver socket {socket_description}, "
            f"state in {state_dir}")


class _SayWho(Protocol):
    def __init__(self, said: bytes) -> None:
        self.said = said

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self.said)
        self.transport.loseConnection()


def claim_host(reactor: Any, description: str, name: str = NAME) -> IListeningPort:
    """Take the host's one hostnic name, answering ``description`` to whoever
    asks; or refuse with the words of the one that holds it. Binding is
    immediate, so the caller knows before it reads any state."""
    said = (description + "\n").encode()
    try:
        port: IListeningPort = reactor.listenUNIX(
            "\0" + name, Factory.forProtocol(lambda: _SayWho(said)))
        return port
    except CannotListenError as e:
        if getattr(e.socketError, "errno", None) != errno.EADDRINUSE:
            raise HostnicError(f"cannot take the one-hostnic-per-host lock "
                               f"(@{name}): {e.socketError}") from None
    raise HostnicError(
        f"another hostnic already hands out this host's NICs: {holder(name)}. "
        f"Two would lend the same NIC twice; stop that one first "
        f"('systemctl stop hostnic.socket hostnic.service' for the .deb's "
        f"service, 'docker plugin disable hostnic' for the managed plugin).")


def holder(name: str = NAME, timeout: float = 2.0) -> str:
    """What the current holder says of itself (one line)."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as sock:
            sock.settimeout(timeout)
            sock.connect("\0" + name)
            said = b""
            while len(said) < 1024:
                chunk = sock.recv(1024)
                if not chunk:
                    break
                said += chunk
    except OSError:
        said = b""
    text = said.decode("utf-8", "replace").strip()
    return text or "it did not say who it is"
