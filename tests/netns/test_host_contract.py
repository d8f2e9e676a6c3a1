"""The host contract (tests/host_contract.py) over the real netlink host, in
a throwaway namespace: what the fake of the unit tests promises, the kernel
does."""

from __future__ import annotations

import json
import uuid
from typing import Any, Callable

import pytest
from twisted.internet.defer import Deferred

from hostnic.core.ports import Sandbox
from hostnic.cnishim import hand_over
from hostnic.kernel import rtnl, sandbox
from hostnic.kernel.host import NetlinkHost
from hostnic.kernel.monitor import LinkMonitor
from hostnic.state.model import LinkInfo
from tests.fakes import run_now
from tests.host_contract import HostContract
from tests.netns.nsutil import FakeReactor, NetnsTestCase, ip

pytestmark = pytest.mark.netns


class RealHostContractTests(HostContract, NetnsTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.held: list[tuple[Deferred[Any], Callable[[], Any]]] | None = None
        self.pods: dict[str, str] = {}  # a handed sandbox's path: its namespace's name
        # The monitor's dumps can be held back, as a slow resync holds them.
        self.monitor = LinkMonitor(FakeReactor(), self.monitor_run)
        self.host = NetlinkHost(self.monitor, run_now, run_now)
        self.done(self.host.start())
        self.addCleanup(self.host.stop)

    def monitor_run(self, f: Callable[[], Any]) -> "Deferred[Any]":
        if self.held is None:
            return run_now(f)
        d: Deferred[Any] = Deferred()
        self.held.append((d, f))
        return d

    def get(self, name: str) -> LinkInfo:
        link = rtnl.get_link(name=name)
        assert link is not None, name
        return link

    def nic(self, name: str, mtu: int = 1500, up: bool = False,
            addresses: tuple[str, ...] = (), mac: str | None = None) -> LinkInfo:
        ip("-n", self.ns, "link", "add", name, *(("address", mac) if mac else ()), "mtu",
           str(mtu), "type", "veth", "peer", "name", f"p{uuid.uuid4().hex[:8]}",
           "netns", self.sandbox)
        for address in addresses:
            ip("-n", self.ns, "addr", "add", address, "dev", name)
        if up:
            ip("-n", self.ns, "link", "set", name, "up")
        return self.get(name)

    def macvlan_on(self, name: str, lower: str) -> LinkInfo:
        ip("-n", self.ns, "link", "add", name, "link", lower, "type", "macvlan")
        return self.get(name)

    def veth_pair(self, name: str, peer: str) -> LinkInfo:
        ip("-n", self.ns, "link", "add", name, "type", "veth", "peer", "name", peer)
        return self.get(name)

    def bridge_port(self, bridge: str, port: str) -> LinkInfo:
        ip("-n", self.ns, "link", "add", bridge, "type", "bridge")
        ip("-n", self.ns, "link", "set", port, "master", bridge)
        return self.get(port)

    def rename_outside(self, name: str, new: str) -> None:
        ip("-n", self.ns, "link", "set", name, "name", new)

    def flush_outside(self, name: str, mtu: int) -> None:
        ip("-n", self.ns, "link", "set", name, "down")
        ip("-n", self.ns, "addr", "flush", "dev", name)
        ip("-n", self.ns, "link", "set", name, "mtu", str(mtu))

    def default_route_via(self, name: str) -> None:
        address = json.loads(ip("-n", self.ns, "-j", "-4", "addr", "show", "dev", name))
        prefix = address[0]["addr_info"][0]["local"].rsplit(".", 1)[0]
        ip("-n", self.ns, "route", "add", "default", "via", f"{prefix}.1", "dev", name)

    def look(self, name: str) -> tuple[str, str, int, bool, list[str]]:
        [link] = json.loads(ip("-n", self.ns, "-j", "addr", "show", "dev", name))
        return (link["ifname"], link["address"], link["mtu"], "UP" in link["flags"],
                sorted(f"{a['local']}/{a['prefixlen']}" for a in link["addr_info"]
                       if a.get("scope") == "global"))

    def inventory_unready(self) -> None:
        self.held = []
        self.monitor.resync()  # its dumps wait: events meanwhile are only buffered
        self.assertFalse(self.monitor.ready)

    def inventory_ready(self) -> None:
        held, self.held = self.held or [], None
        for d, f in held:
            d.callback(f())
        self.assertTrue(self.monitor.ready)

    def events_delivered(self) -> None:
        self.monitor.doRead()  # what the reactor does when the socket is readable

    def handed_sandbox(self) -> Sandbox:
        name = f"hnp{uuid.uuid4().hex[:8]}"
        ip("netns", "add", name)
        self.addCleanup(ip, "netns", "del", name, check=False)
        path = f"/run/netns/{name}"
        handed = sandbox.Sandbox.handed(path, *hand_over(path))
        self.addCleanup(handed.close)
        self.pods[path] = name
        return handed

    def link_inside(self, pod: Sandbox, name: str) -> None:
        ip("-n", self.pods[pod.key], "link", "add", name, "type", "veth", "peer", "name",
           f"q{uuid.uuid4().hex[:8]}")

    def rename_inside(self, pod: Sandbox, name: str, new: str) -> None:
        ip("-n", self.pods[pod.key], "link", "set", name, "name", new)

    def look_inside(self, pod: Sandbox, name: str) -> tuple[str, str, int, bool, list[str]]:
        [link] = json.loads(ip("-n", self.pods[pod.key], "-j", "addr", "show", "dev", name))
        return (link["ifname"], link["address"], link["mtu"], "UP" in link["flags"],
                sorted(f"{a['local']}/{a['prefixlen']}" for a in link["addr_info"]
                       if a.get("scope") == "global"))
