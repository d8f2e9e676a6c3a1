"""The netlink layer and the inventory against the real kernel."""

from __future__ import annotations

import json
from typing import Any
import socket

from twisted.internet.defer import Deferred

from hostnic import netlink
from hostnic.host import NetlinkHost, find_nic
from hostnic.host import read_state as host_read_state
from hostnic import rtnl
from hostnic.linkwatch import LinkMonitor
from hostnic.rtnl import dump_links
from hostnic.model import Address, NicRef, NicState
from tests.fakes import run_now
from tests.netns.nsutil import FakeReactor, NetnsTestCase, ip

import pytest

pytestmark = pytest.mark.netns


class NetlinkTests(NetnsTestCase):
    def test_read_lend_and_restore_a_real_nic(self) -> None:
        mac = self.veth("ens9")
        ip("-n", self.ns, "link", "set", "ens9", "mtu", "1400", "up")
        ip("-n", self.ns, "addr", "add", "10.5.0.5/24", "dev", "ens9")
        ip("-n", self.ns, "addr", "add", "fd05::5/64", "dev", "ens9", "nodad")
        link = rtnl.get_link(name="ens9")
        assert link is not None
        original = host_read_state(link.index)
        self.assertEqual((original.name, original.mac, original.mtu, original.up),
                         ("ens9", mac, 1400, True))
        self.assertIn(Address(socket.AF_INET, "10.5.0.5", 24), original.addresses)
        self.assertIn(Address(socket.AF_INET6, "fd05::5", 64), original.addresses)

        netlink.rename(link.index, "hntransit")
        # What dockerd does: move, rename eth0, configure; then back, down.
        ip("-n", self.ns, "link", "set", "hntransit", "netns", self.sandbox)
        ip("-n", self.sandbox, "link", "set", "hntransit", "name", "eth0")
        ip("-n", self.sandbox, "addr", "add", "192.168.5.10/24", "dev", "eth0")
        ip("-n", self.sandbox, "link", "set", "eth0", "up")
        ip("-n", self.sandbox, "link", "set", "eth0", "down")
        ip("-n", self.sandbox, "link", "set", "eth0", "name", "hntransit")
        ip("-n", self.sandbox, "link", "set", "hntransit", "netns", self.ns)
        back = find_nic(NicRef(mac), "hntransit")
        assert back is not None
        self.assertFalse(back.up)
        self.assertEqual(netlink.restore(back.index, original), [])
        self.assertTrue(set(host_read_state(back.index).addresses) >= set(original.addresses))
        shown = json.loads(ip("-n", self.ns, "-j", "addr", "show", "dev", "ens9"))[0]
        self.assertEqual((shown["mtu"], shown["address"], "UP" in shown["flags"]), (1400, mac, True))

    def test_restore_reports_a_name_taken_meanwhile_and_does_the_rest(self) -> None:
        mac = self.veth("ens9")
        original = NicState("ens8", mac, 1500, True, (Address(socket.AF_INET, "10.6.0.6", 24),))
        self.veth("ens8")  # someone took the name while the NIC was lent
        link = rtnl.get_link(name="ens9")
        assert link is not None
        problems = netlink.restore(link.index, original)
        self.assertEqual(len(problems), 1)
        self.assertIn("name ens8", problems[0])
        self.assertIn(Address(socket.AF_INET, "10.6.0.6", 24), host_read_state(link.index).addresses)

    def test_default_route_links(self) -> None:
        self.veth("mgmt0")
        ip("-n", self.ns, "addr", "add", "10.7.0.2/24", "dev", "mgmt0")
        ip("-n", self.ns, "link", "set", "mgmt0", "up")
        ip("-n", self.ns, "route", "add", "default", "via", "10.7.0.1")
        link = rtnl.get_link(name="mgmt0")
        assert link is not None
        self.assertEqual(rtnl.default_route_links(), {link.index})

    def test_default_route_of_one_link_any_table_either_family(self) -> None:
        self.veth("mgmt0")
        self.veth("ten0")
        self.veth("ten1")
        for dev, prefix in (("mgmt0", "10.7.0"), ("ten0", "10.8.0"), ("ten1", "10.9.0")):
            ip("-n", self.ns, "addr", "add", f"{prefix}.2/24", "dev", dev)
            ip("-n", self.ns, "link", "set", dev, "up")
        ip("-n", self.ns, "-6", "addr", "add", "fd09::2/64", "dev", "ten1", "nodad")
        ip("-n", self.ns, "route", "add", "default", "via", "10.7.0.1")
        ip("-n", self.ns, "route", "add", "default", "via", "10.8.0.1", "table", "100")
        ip("-n", self.ns, "-6", "route", "add", "default", "via", "fd09::1", "dev", "ten1")
        ip("-n", self.ns, "route", "add", "10.50.0.0/16", "via", "10.9.0.1")
        index = {name: rtnl.get_link(name=name).index  # type: ignore[union-attr]
                 for name in ("mgmt0", "ten0", "ten1")}
        self.assertTrue(rtnl.carries_default_route(index["mgmt0"]))
        self.assertTrue(rtnl.carries_default_route(index["ten0"]))  # a policy table
        self.assertTrue(rtnl.carries_default_route(index["ten1"]))  # IPv6 only
        ip("-n", self.ns, "-6", "route", "del", "default", "via", "fd09::1", "dev", "ten1")
        self.assertFalse(rtnl.carries_default_route(index["ten1"]))  # other routes only

    def test_a_nic_whose_mac_changed_while_lent_is_found_by_its_transit_name(self) -> None:
        mac = self.veth("ens9")
        ip("-n", self.ns, "link", "set", "ens9", "up")
        link = rtnl.get_link(name="ens9")
        assert link is not None
        original = host_read_state(link.index)
        netlink.rename(link.index, "hntransit")
        ip("-n", self.ns, "link", "set", "hntransit", "netns", self.sandbox)
        ip("-n", self.sandbox, "link", "set", "hntransit", "address", "02:aa:bb:cc:dd:ee")
        ip("-n", self.sandbox, "link", "set", "hntransit", "netns", self.ns)
        self.assertIsNone(find_nic(NicRef(mac), None))  # not by its MAC any more
        back = find_nic(NicRef(mac), "hntransit")
        assert back is not None
        self.assertEqual(netlink.restore(back.index, original), [])
        shown = json.loads(ip("-n", self.ns, "-j", "link", "show", "dev", "ens9"))[0]
        self.assertEqual((shown["address"], "UP" in shown["flags"]), (mac, True))

    def test_absent_links(self) -> None:
        self.assertIsNone(rtnl.get_link(name="nope0"))
        self.assertIsNone(rtnl.get_link(index=99999))
        self.assertIsNone(find_nic(NicRef("02:00:00:00:00:77"), None))


class InventoryTests(NetnsTestCase):
    def monitor(self) -> LinkMonitor:
        monitor = LinkMonitor(FakeReactor(), run_now)
        self.successResultOf(monitor.start())
        self.addCleanup(monitor.stop)
        return monitor

    def test_dump_matches_ip(self) -> None:
        for i in range(5):
            self.veth(f"v{i}")
        names = {link.name for link in dump_links()}
        self.assertEqual(names, {"lo", "v0", "v1", "v2", "v3", "v4"})

    def test_events_keep_the_mac_index_current(self) -> None:
        monitor = self.monitor()
        mac = self.veth("ens9")
        monitor.drain()
        [link] = monitor.inventory.by_mac(mac)
        self.assertEqual((link.name, link.kind), ("ens9", "veth"))
        ip("-n", self.ns, "link", "set", "ens9", "name", "renamed")
        monitor.drain()
        self.assertEqual(monitor.inventory.by_mac(mac)[0].name, "renamed")
        ip("-n", self.ns, "link", "set", "renamed", "netns", self.sandbox)
        monitor.drain()
        self.assertEqual(monitor.inventory.by_mac(mac), [])

    def test_overflow_resyncs_to_the_truth(self) -> None:
        monitor = LinkMonitor(FakeReactor(), run_now, receive_buffer=4096)
        self.successResultOf(monitor.start())
        self.addCleanup(monitor.stop)
        batch = "".join(f"link add x{i} type veth peer name y{i}\n" for i in range(150))
        import subprocess
        subprocess.run(["ip", "-n", self.ns, "-batch", "-"], input=batch.encode(), check=True)
        monitor.drain()  # the kernel dropped events: ENOBUFS, then a resync
        self.assertEqual(monitor.resyncs, 2)
        self.assertEqual({l.name for l in monitor.inventory.all()},
                         {l.name for l in dump_links()})
        self.assertEqual(len(monitor.inventory), 301)

    def test_a_listener_that_looks_links_up_during_a_burst(self) -> None:
        monitor = self.monitor()
        mac = self.veth("r0")
        monitor.drain()
        seen: list[str] = []

        def listener(msg_type: int, link: object) -> None:
            seen.append(getattr(link, "name"))
            monitor.drain()  # as NetlinkHost.known_links does from a restore

        monitor.listeners.append(listener)
        # 1,500 queued events: draining from inside a listener without the
        # guard nests once per event, past Python's recursion limit.
        renames = "".join(f"link set r{i} name r{i + 1}\n" for i in range(1500))
        import subprocess
        subprocess.run(["ip", "-n", self.ns, "-batch", "-"], input=renames.encode(), check=True)
        monitor.drain()
        self.assertEqual(seen, [f"r{i + 1}" for i in range(1500)])
        self.assertEqual(monitor.inventory.by_mac(mac)[0].name, "r1500")
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_the_request_path_asks_the_kernel_nothing(self) -> None:
        monitor = self.monitor()
        mac = self.veth("ens9")
        ip("-n", self.ns, "link", "set", "ens9", "mtu", "1400", "up")
        ip("-n", self.ns, "addr", "add", "10.5.0.5/24", "dev", "ens9")
        ip("-n", self.ns, "addr", "add", "fd05::5/64", "dev", "ens9", "nodad")
        host = NetlinkHost(monitor, run_now, run_now)
        asked: list[int] = []
        real_dump = rtnl.dump
        rtnl.dump = lambda *a, **k: asked.append(1) or real_dump(*a, **k)  # type: ignore

        def lookup(coroutine: Any) -> Any:
            """The result of a lookup that must not ask the kernel anything."""
            before = len(asked)
            result = self.successResultOf(Deferred.fromCoroutine(coroutine))
            self.assertEqual(len(asked), before)
            return result

        try:
            found = lookup(host.locate(NicRef(mac)))
            self.assertEqual(found.name, "ens9")
            # The inventory's view of the NIC, addresses included, is the kernel's.
            self.assertEqual(lookup(host.read_state(found.index)), host_read_state(found.index))
            ip("-n", self.ns, "addr", "del", "10.5.0.5/24", "dev", "ens9")
            state = lookup(host.read_state(found.index))
            self.assertEqual(state, host_read_state(found.index))
            self.assertNotIn("10.5.0.5", [a.address for a in state.addresses])
            self.assertIsNone(lookup(host.locate(NicRef("02:00:00:00:00:77"))))
            # Restoring a NIC that is not home (still in its container) looks
            # for it by its transit name and MAC, and asks nothing either.
            ip("-n", self.ns, "link", "set", "ens9", "name", "hnaway")
            ip("-n", self.ns, "link", "set", "hnaway", "netns", self.sandbox)
            self.assertIsNone(lookup(host.locate(NicRef(mac), transit_name="hnaway")))
            ip("-n", self.sandbox, "link", "set", "hnaway", "netns", self.ns)
            self.assertEqual(lookup(host.locate_name("hnaway")).mac, mac)
        finally:
            rtnl.dump = real_dump  # type: ignore[assignment]

    def test_a_broken_event_socket_heals_and_resyncs(self) -> None:
        reactor = FakeReactor()
        monitor = LinkMonitor(reactor, run_now)
        self.successResultOf(monitor.start())
        self.addCleanup(monitor.stop)
        assert monitor._sock is not None
        monitor._sock.close()  # the socket fails under the monitor
        mac = self.veth("late0")  # an event the dead socket cannot deliver
        monitor.doRead()
        self.assertFalse(monitor.ready)
        self.flushLoggedErrors()
        host = NetlinkHost(monitor, run_now, run_now)
        # Not current: a lookup confirms with the kernel rather than trust it.
        found = self.successResultOf(Deferred.fromCoroutine(host.locate(NicRef(mac))))
        self.assertEqual(found.name, "late0")  # type: ignore[union-attr]
        reactor.advance(1)  # reopened and resynced
        self.assertTrue(monitor.ready)
        self.assertEqual(monitor.inventory.by_mac(mac)[0].name, "late0")
