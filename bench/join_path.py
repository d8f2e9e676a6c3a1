"""The path of one Join, measured: the hostnic modules whose code runs, the
thread hops it makes, and the netlink requests it sends on how many netlink
sockets. The daemon is built as twistd builds it (``hostnic.daemon.compose``)
over the real kernel, in a namespace of its own with a veth as the NIC; the
Join goes through the driver's routes. Root.

    python -m bench.join_path
"""

from __future__ import annotations

import ctypes
import importlib
import itertools
import json
import os
import socket
import subprocess
import sys
import tempfile
import uuid
from typing import Any, Callable

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.task import Clock

CLONE_NEWNET = 0x40000000


class Counted:
    """What the Join did: filled by the wrappers below while it runs."""

    modules: set[str] = set()
    hops = 0
    requests = 0
    sockets: set[int] = set()
    tracing = False


SERIALS = itertools.count()


class CountingSocket(socket.socket):
    """A netlink socket that counts what is sent on it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.serial = next(SERIALS)  # id() is reused once a socket is gone

    def _count(self) -> None:
        if Counted.tracing and self.family == socket.AF_NETLINK:
            Counted.requests += 1
            Counted.sockets.add(self.serial)

    def send(self, *args: Any, **kwargs: Any) -> int:
        self._count()
        return super().send(*args, **kwargs)

    def sendto(self, *args: Any, **kwargs: Any) -> int:  # type: ignore[override]
        self._count()
        return super().sendto(*args, **kwargs)

    def sendmsg(self, *args: Any, **kwargs: Any) -> int:
        self._count()
        return super().sendmsg(*args, **kwargs)


def hop(f: Callable[..., Any], *args: Any, **kwargs: Any) -> "Deferred[Any]":
    """A thread hop (run at once: counted, not timed)."""
    if Counted.tracing:
        Counted.hops += 1
    return maybeDeferred(f, *args, **kwargs)


def profile(frame: Any, event: str, arg: Any) -> None:
    if event == "call":
        name = frame.f_globals.get("__name__", "")
        if name.startswith("hostnic"):
            Counted.modules.add(name)


def in_namespace() -> str:
    ns = f"hnjp{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
    subprocess.run(["ip", "-n", ns, "link", "add", "ens9", "type", "veth", "peer", "name",
                    "peer9"], check=True)
    subprocess.run(["ip", "-n", ns, "link", "set", "ens9", "up"], check=True)
    fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    if ctypes.CDLL(None, use_errno=True).setns(fd, CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "setns failed")
    os.close(fd)
    return ns


def main() -> None:
    socket.socket = CountingSocket  # type: ignore[misc]  # before pyroute2 loads
    ns = in_namespace()
    try:
        try:  # the packages by layer
            from hostnic.daemon.compose import Ports, Settings, build
            from hostnic.kernel.host import NetlinkHost
            from hostnic.kernel.monitor import LinkMonitor
            importlib.import_module("hostnic.kernel.changes")  # pyroute2, before the count
        except ImportError:  # the flat layout before them
            from hostnic.compose import Ports, Settings, build  # type: ignore
            from hostnic.host import NetlinkHost  # type: ignore
            from hostnic.linkwatch import LinkMonitor  # type: ignore
            importlib.import_module("hostnic.netlink")
        measure(Ports, Settings, build, NetlinkHost, LinkMonitor)
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


def measure(Ports: Any, Settings: Any, build: Any, NetlinkHost: Any, LinkMonitor: Any) -> None:
    from treq.testing import StubTreq

    class Reactor(Clock):
        def addReader(self, reader: object) -> None:
            pass

        def removeReader(self, reader: object) -> None:
            pass

    monitor = LinkMonitor(Reactor(), hop)
    daemon = build(Settings(tempfile.mkdtemp(prefix="hnjp-")), Ports(
        reactor=Reactor(), host=NetlinkHost(monitor, hop, hop), run_in_thread=hop))
    Deferred.fromCoroutine(daemon.start())
    driver = StubTreq(daemon.driver.app.resource())
    mac = json.loads(subprocess.run(["ip", "-j", "link", "show", "ens9"], check=True,
                                    capture_output=True, text=True).stdout)[0]["address"]
    net, ep = "a" * 64, "b" * 64

    def post(method: str, body: dict[str, Any]) -> Any:
        answers: list[Any] = []
        d = driver.post(f"http://plugin/NetworkDriver.{method}", data=json.dumps(body).encode())
        d.addCallback(lambda response: response.json()).addCallback(answers.append)
        return answers[0]

    post("CreateNetwork", {"NetworkID": net, "Options": {
        "com.docker.network.generic": {"hostnic_mac": mac}},
        "IPv4Data": [{"Pool": "10.9.0.0/24", "Gateway": "10.9.0.1/24"}]})
    post("CreateEndpoint", {"NetworkID": net, "EndpointID": ep,
                            "Interface": {"Address": "10.9.0.10/24"}})
    Counted.tracing = True
    sys.setprofile(profile)
    answer = post("Join", {"NetworkID": net, "EndpointID": ep, "SandboxKey": "/x"})
    sys.setprofile(None)
    Counted.tracing = False
    daemon.halt()
    print(json.dumps({
        "answer": answer.get("InterfaceName"), "modules_crossed": len(Counted.modules),
        "modules": sorted(Counted.modules), "thread_hops": Counted.hops,
        "netlink_requests": Counted.requests, "netlink_sockets": len(Counted.sockets)},
        indent=1))


if __name__ == "__main__":
    main()
