"""The netlink layer and the inventory against the real kernel."""

from __future__ import annotations

import json
import socket

from twisted.internet.defer import Deferred

from hostnic import netlink
from hostnic.host import NetlinkHost
from hostnic.linkwatch import LinkMonitor, dump_links
from hostnic.model import Address, NicState
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
        link = netlink.get_link(name="ens9")
        assert link is not None
        original = netlink.read_state(link.index)
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
        back = netlink.find_by_mac(mac, name="hntransit")
        assert back is not None
        self.assertFalse(back.up)
        self.assertEqual(netlink.restore(back.index, original), [])
        self.assertTrue(set(netlink.read_state(back.index).addresses) >= set(original.addresses))
        shown = json.loads(ip("-n", self.ns, "-j", "addr", "show", "dev", "ens9"))[0]
        self.assertEqual((shown["mtu"], shown["address"], "UP" in shown["flags"]), (1400, mac, True))

    def test_restore_reports_a_name_taken_meanwhile_and_does_the_rest(self) -> None:
        mac = self.veth("ens9")
        original = NicState("ens8", mac, 1500, True, (Address(socket.AF_INET, "10.6.0.6", 24),))
        self.veth("ens8")  # someone took the name while the NIC was lent
        link = netlink.get_link(name="ens9")
        assert link is not None
        problems = netlink.restore(link.index, original)
        self.assertEqual(len(problems), 1)
        self.assertIn("name ens8", problems[0])
        self.assertIn(Address(socket.AF_INET, "10.6.0.6", 24), netlink.read_state(link.index).addresses)

    def test_default_route_links(self) -> None:
        self.veth("mgmt0")
        ip("-n", self.ns, "addr", "add", "10.7.0.2/24", "dev", "mgmt0")
        ip("-n", self.ns, "link", "set", "mgmt0", "up")
        ip("-n", self.ns, "route", "add", "default", "via", "10.7.0.1")
        link = netlink.get_link(name="mgmt0")
        assert link is not None
        self.assertEqual(netlink.default_route_ifindexes(), {link.index})

    def test_absent_links(self) -> None:
        self.assertIsNone(netlink.get_link(name="nope0"))
        self.assertIsNone(netlink.get_link(index=99999))
        self.assertIsNone(netlink.find_by_mac("02:00:00:00:00:77"))


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

    def test_request_path_never_dumps(self) -> None:
        monitor = self.monitor()
        mac = self.veth("ens9")
        host = NetlinkHost(monitor, run_now)
        dumps: list[int] = []
        real_dump = netlink.dump_links
        netlink.dump_links = lambda: dumps.append(1) or real_dump()  # type: ignore[assignment]
        self.addCleanup(setattr, netlink, "dump_links", real_dump)
        found = self.successResultOf(Deferred.fromCoroutine(host.locate(mac)))
        assert found is not None
        self.assertEqual(found.name, "ens9")
        absent = self.successResultOf(Deferred.fromCoroutine(host.locate("02:00:00:00:00:77")))
        self.assertIsNone(absent)
        self.assertEqual(dumps, [])
        link = self.successResultOf(Deferred.fromCoroutine(host.locate_name("ens9")))
        self.assertEqual(link, found)
