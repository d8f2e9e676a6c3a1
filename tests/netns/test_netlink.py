"""The netlink layer and the inventory against the real kernel."""

from __future__ import annotations

import json

import attrs
import os
import socket
import subprocess
from typing import Any

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from hostnic.kernel import changes, record, rtnl
from hostnic.kernel.host import NetlinkHost, find_links
from hostnic.kernel.monitor import LinkMonitor
from hostnic.kernel.rtnl import dump_links
from hostnic.state.model import Address, LinkInfo, NicRef, NicState
from tests.fakes import run_now
from tests.netns.nsutil import FakeReactor, NetnsTestCase, ip

import pytest

pytestmark = pytest.mark.netns


def host_read_state(index: int) -> NicState:
    return record.read(index)[1]


class NetlinkTests(NetnsTestCase):
    def lend_and_get_back(self, index: int, mac: str) -> LinkInfo:
        """hostnic's rename, then what dockerd does: move, rename eth0,
        configure, use; then down, the transit name again, and home."""
        changes.rename(index, "hntransit")
        ip("-n", self.ns, "link", "set", "hntransit", "netns", self.sandbox)
        ip("-n", self.sandbox, "link", "set", "hntransit", "name", "eth0")
        ip("-n", self.sandbox, "addr", "add", "192.168.5.10/24", "dev", "eth0")
        ip("-n", self.sandbox, "link", "set", "eth0", "up")
        ip("-n", self.sandbox, "link", "set", "eth0", "down")
        ip("-n", self.sandbox, "link", "set", "eth0", "name", "hntransit")
        ip("-n", self.sandbox, "link", "set", "hntransit", "netns", self.ns)
        [back] = find_links(NicRef(mac), "hntransit")
        return back

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
        keys = {a.key for a in original.addresses}
        self.assertIn((socket.AF_INET, "10.5.0.5", 24), keys)
        self.assertIn((socket.AF_INET6, "fd05::5", 64), keys)

        back = self.lend_and_get_back(link.index, mac)
        self.assertFalse(back.up)
        self.assertEqual(changes.restore(back.index, original), [])
        self.assertEqual(host_read_state(back.index).addresses, original.addresses)
        shown = json.loads(ip("-n", self.ns, "-j", "addr", "show", "dev", "ens9"))[0]
        self.assertEqual((shown["mtu"], shown["address"], "UP" in shown["flags"]), (1400, mac, True))

    def configure_a_production_nic(self, name: str) -> None:
        """A tenant NIC as a cloud VM has it: addresses with flags, a label and
        a lease, routes in the main and a policy table, sysctls of its own,
        an alias, an altname, a txqueuelen and a group."""
        sysctl = f"/proc/sys/net/ipv4/conf/{name}"
        ip("-n", self.ns, "link", "set", name, "mtu", "1400", "txqueuelen", "500", "group", "7",
           "alias", "tenant uplink")
        ip("-n", self.ns, "link", "property", "add", "dev", name, "altname", "tenant0")
        for path, value in ((f"{sysctl}/rp_filter", "2"), (f"{sysctl}/arp_ignore", "1"),
                            (f"/proc/sys/net/ipv6/conf/{name}/accept_ra", "0")):
            with open(path, "w") as f:
                f.write(value)
        ip("-n", self.ns, "link", "set", name, "up")
        for address in (["10.5.0.5/24", "label", f"{name}:pri"], ["10.5.0.6/24"],
                        ["10.5.1.5/24", "noprefixroute"],
                        ["10.5.2.5/24", "valid_lft", "3600", "preferred_lft", "1800"],
                        ["fd05::5/64", "nodad"]):
            ip("-n", self.ns, "addr", "add", *address, "dev", name)
        for route in (["10.8.0.0/16", "via", "10.5.0.1", "metric", "50"],
                      ["10.9.0.0/24", "dev", name, "scope", "link", "src", "10.5.0.5",
                       "table", "100"],
                      ["default", "via", "10.5.0.1", "table", "100", "proto", "static"],
                      ["-6", "fd09::/64", "via", "fd05::1", "metric", "7"]):
            family = [route.pop(0)] if route[0] == "-6" else []
            ip("-n", self.ns, *family, "route", "add", *route, "dev", name)

    def test_a_nic_comes_back_with_everything_it_had(self) -> None:
        mac = self.veth("ens9")
        self.configure_a_production_nic("ens9")
        # A table past the 8 bits of the route message's header field.
        ip("-n", self.ns, "route", "add", "10.10.0.0/16", "via", "10.5.0.1", "dev", "ens9",
           "table", "1000")
        link = rtnl.get_link(name="ens9")
        assert link is not None
        original = host_read_state(link.index)
        self.assertEqual((original.alias, original.altnames, original.txqlen, original.group),
                         ("tenant uplink", ("tenant0",), 500, 7))
        self.assertEqual(len(original.routes), 5, [str(r) for r in original.routes])
        self.assertIn(("ipv4/rp_filter", "2"), original.sysctls)

        back = self.lend_and_get_back(link.index, mac)
        self.assertNotEqual(host_read_state(back.index).sysctls, original.sysctls)  # reset
        self.assertEqual(changes.restore(back.index, original), [])

        now = host_read_state(back.index)
        for field in ("name", "mac", "mtu", "up", "routes", "sysctls", "alias", "altnames",
                      "txqlen", "group"):
            self.assertEqual(getattr(now, field), getattr(original, field), field)
        # Flags, labels and order as they were; the lease aged, not renewed.
        self.assertEqual([(a.key, a.flags, a.label) for a in now.addresses],
                         [(a.key, a.flags, a.label) for a in original.addresses])
        [lease] = [a for a in now.addresses if a.address == "10.5.2.5"]
        assert lease.valid is not None and lease.preferred is not None
        self.assertTrue(3500 < lease.valid <= 3600 and 1700 < lease.preferred <= 1800)
        shown = json.loads(ip("-n", self.ns, "-j", "addr", "show", "dev", "ens9"))[0]
        self.assertIn("noprefixroute", [a for a in shown["addr_info"]
                                        if a["local"] == "10.5.1.5"][0])

    def test_what_adopt_mode_takes_from_a_nic(self) -> None:
        self.veth("ens9")
        self.configure_a_production_nic("ens9")
        link = rtnl.get_link(name="ens9")
        assert link is not None
        adopted = record.adopt(link.index)
        assert adopted.address4 is not None and adopted.address6 is not None
        self.assertEqual((adopted.address4.cidr, adopted.address6.cidr),
                         ("10.5.0.5/24", "fd05::5/64"))
        # No default in the main table: the policy table's is the NIC's own.
        self.assertEqual((adopted.gateway4, adopted.gateway6), ("10.5.0.1", None))
        # A main-table default comes first, even with a worse metric.
        ip("-n", self.ns, "route", "add", "default", "via", "10.5.0.254", "dev", "ens9",
           "metric", "500")
        self.assertEqual(record.adopt(link.index).gateway4, "10.5.0.254")
        adopted = record.adopt(link.index)
        self.assertEqual(sorted(r.destination for r in adopted.routes),
                         ["10.8.0.0/16", "10.9.0.0/24", "fd09::/64"])
        # The kernel lists primaries first: 10.5.0.6 is 10.5.0.5's secondary.
        self.assertEqual([a.cidr for a in adopted.not_carried],
                         ["10.5.1.5/24", "10.5.2.5/24", "10.5.0.6/24"])

    def test_restore_reports_a_name_taken_meanwhile_and_does_the_rest(self) -> None:
        mac = self.veth("ens9")
        original = NicState("ens8", mac, 1500, True, (Address(socket.AF_INET, "10.6.0.6", 24),))
        self.veth("ens8")  # someone took the name while the NIC was lent
        link = rtnl.get_link(name="ens9")
        assert link is not None
        problems = changes.restore(link.index, original)
        self.assertEqual(len(problems), 1)
        self.assertIn("name ens8", problems[0])
        self.assertIn((socket.AF_INET, "10.6.0.6", 24),
                      [a.key for a in host_read_state(link.index).addresses])

    def test_a_thousand_routes_come_back_and_the_next_change_still_works(self) -> None:
        """More acknowledgements than a socket's buffer holds: a batch goes
        out in slices, each read before the next, and nothing is left to
        answer the next change."""
        mac = self.veth("ens9")
        ip("-n", self.ns, "link", "set", "ens9", "up")
        ip("-n", self.ns, "addr", "add", "10.5.0.5/24", "dev", "ens9")
        import subprocess
        batch = "".join(f"route add 10.{100 + i // 250}.{i % 250}.0/24 via 10.5.0.1 dev ens9\n"
                        for i in range(1000))
        subprocess.run(["ip", "-n", self.ns, "-batch", "-"], input=batch.encode(), check=True)
        link = rtnl.get_link(name="ens9")
        assert link is not None
        original = host_read_state(link.index)
        self.assertEqual(len(original.routes), 1000)
        back = self.lend_and_get_back(link.index, mac)
        self.assertEqual(changes.restore(back.index, original), [])
        self.assertEqual(len(host_read_state(back.index).routes), 1000)
        # Routes the kernel refuses (a gateway off every subnet now): 1,000 errors.
        ip("-n", self.ns, "addr", "flush", "dev", "ens9")
        problems = changes.restore(back.index, attrs.evolve(original, addresses=()))
        self.assertEqual(len(problems), 1000)
        changes.rename(back.index, "hnnext")  # the same thread's socket, still in step
        self.assertEqual(rtnl.get_link(index=back.index).name, "hnnext")  # type: ignore[union-attr]

    def test_an_mtu_set_back_leaves_the_ipv6_mtu_as_recorded(self) -> None:
        mac = self.veth("ens9")
        ip("-n", self.ns, "link", "set", "ens9", "mtu", "9000")
        with open("/proc/sys/net/ipv6/conf/ens9/mtu", "w") as f:
            f.write("1500")
        link = rtnl.get_link(name="ens9")
        assert link is not None
        original = host_read_state(link.index)
        self.assertIn(("ipv6/mtu", "1500"), original.sysctls)
        back = self.lend_and_get_back(link.index, mac)
        ip("-n", self.ns, "link", "set", "hntransit", "mtu", "1500")  # as a container left it
        self.assertEqual(changes.restore(back.index, original), [])
        now = host_read_state(back.index)
        self.assertEqual((now.mtu, dict(now.sysctls)["ipv6/mtu"]), (9000, "1500"))

    def test_an_altname_another_link_took_is_reported(self) -> None:
        mac = self.veth("ens9")
        ip("-n", self.ns, "link", "property", "add", "dev", "ens9", "altname", "uplink0")
        link = rtnl.get_link(name="ens9")
        assert link is not None
        original = host_read_state(link.index)
        back = self.lend_and_get_back(link.index, mac)
        ip("-n", self.ns, "link", "property", "del", "dev", "hntransit", "altname", "uplink0")
        self.veth("other0")
        ip("-n", self.ns, "link", "property", "add", "dev", "other0", "altname", "uplink0")
        problems = changes.restore(back.index, original)
        self.assertEqual(len(problems), 1, problems)
        self.assertIn("altname uplink0", problems[0])

    def test_the_host_default_is_the_main_tables_best_of_each_family(self) -> None:
        for dev, prefix in (("mgmt0", "10.7.0"), ("ten0", "10.8.0"), ("ten1", "10.9.0"),
                            ("ten2", "10.10.0")):
            self.veth(dev)
            ip("-n", self.ns, "addr", "add", f"{prefix}.2/24", "dev", dev)
            ip("-n", self.ns, "link", "set", dev, "up")
        ip("-n", self.ns, "-6", "addr", "add", "fd09::2/64", "dev", "ten1", "nodad")
        ip("-n", self.ns, "route", "add", "default", "via", "10.7.0.1", "metric", "100")
        # A tenant NIC's own defaults: in a policy table, and a second DHCP
        # default with a higher metric. Neither is the route the host uses.
        ip("-n", self.ns, "route", "add", "default", "via", "10.8.0.1", "table", "100")
        ip("-n", self.ns, "route", "add", "default", "via", "10.10.0.1", "metric", "200")
        ip("-n", self.ns, "-6", "route", "add", "default", "via", "fd09::1", "dev", "ten1")
        index = {name: rtnl.get_link(name=name).index  # type: ignore[union-attr]
                 for name in ("mgmt0", "ten0", "ten1", "ten2")}
        # IPv6 leaves by ten1 (its only default): that NIC is the host's too.
        self.assertEqual(rtnl.host_default_links(), {index["mgmt0"], index["ten1"]})
        ip("-n", self.ns, "-6", "route", "del", "default", "via", "fd09::1", "dev", "ten1")
        ip("-n", self.ns, "route", "del", "default", "via", "10.7.0.1")
        self.assertEqual(rtnl.host_default_links(), {index["ten2"]})

    def test_a_nic_whose_mac_changed_while_lent_is_found_by_its_transit_name(self) -> None:
        mac = self.veth("ens9")
        ip("-n", self.ns, "link", "set", "ens9", "up")
        link = rtnl.get_link(name="ens9")
        assert link is not None
        original = host_read_state(link.index)
        changes.rename(link.index, "hntransit")
        # A container's namespace: only its loopback (no index to collide with).
        container = self.ns.replace("hnt", "hnc")
        ip("netns", "add", container)
        self.addCleanup(ip, "netns", "del", container, check=False)
        ip("-n", self.ns, "link", "set", "hntransit", "netns", container)
        ip("-n", container, "link", "set", "hntransit", "address", "02:aa:bb:cc:dd:ee")
        ip("-n", container, "link", "set", "hntransit", "netns", self.ns)
        self.assertEqual(find_links(NicRef(mac), None), [])  # not by its MAC any more
        [back] = find_links(NicRef(mac), "hntransit")
        # The name is no proof; the index is: the two namespace moves kept it.
        self.assertEqual(back.index, link.index)
        self.assertTrue(NicRef(mac).is_link(back, original.index))
        self.assertFalse(NicRef(mac).is_link(back))
        self.assertEqual(changes.restore(back.index, original), [])
        shown = json.loads(ip("-n", self.ns, "-j", "link", "show", "dev", "ens9"))[0]
        self.assertEqual((shown["address"], "UP" in shown["flags"]), (mac, True))

    def test_absent_links(self) -> None:
        self.assertIsNone(rtnl.get_link(name="nope0"))
        self.assertIsNone(rtnl.get_link(index=99999))
        self.assertEqual(find_links(NicRef("02:00:00:00:00:77"), None), [])


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
        current: set[str] = set()
        depth = [0, 0]  # now, deepest

        def listener(msg_type: int, link: object) -> None:
            depth[0] += 1
            depth[1] = max(depth)
            try:
                seen.append(getattr(link, "name"))
                monitor.drain()  # as NetlinkHost.locate does from a settle
                current.add(monitor.inventory.by_mac(mac)[0].name)
            finally:
                depth[0] -= 1

        monitor.listeners.append(listener)
        # 1,500 queued events: draining from inside a listener without the
        # guards nests once per event, past Python's recursion limit (and the
        # RecursionError is caught as a failing listener's would be).
        renames = "".join(f"link set r{i} name r{i + 1}\n" for i in range(1500))
        import subprocess
        subprocess.run(["ip", "-n", self.ns, "-batch", "-"], input=renames.encode(), check=True)
        monitor.drain()
        self.assertEqual(seen, [f"r{i + 1}" for i in range(1500)])
        # Each listener looked the link up as the kernel has it now, not as
        # it was in the middle of the burst.
        self.assertEqual(current, {"r1500"})
        self.assertEqual(depth[1], 1)
        self.assertEqual(monitor.inventory.by_mac(mac)[0].name, "r1500")
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_lookups_ask_the_kernel_nothing(self) -> None:
        monitor = self.monitor()
        mac = self.veth("ens9")
        ip("-n", self.ns, "link", "set", "ens9", "mtu", "1400", "up")
        ip("-n", self.ns, "addr", "add", "10.5.0.5/24", "dev", "ens9")
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
            self.assertEqual((found.name, found.mtu, found.up), ("ens9", 1400, True))
            self.assertIsNone(lookup(host.locate(NicRef("02:00:00:00:00:77"))))
            # Restoring a NIC that is not home (still in its container) looks
            # for it by its transit name and MAC, and asks nothing either.
            ip("-n", self.ns, "link", "set", "ens9", "name", "hnaway")
            ip("-n", self.ns, "link", "set", "hnaway", "netns", self.sandbox)
            self.assertIsNone(lookup(host.locate(NicRef(mac), transit_name="hnaway")))
            ip("-n", self.sandbox, "link", "set", "hnaway", "netns", self.ns)
            home = lookup(host.locate_name("hnaway"))
            self.assertEqual(home.mac, mac)
        finally:
            rtnl.dump = real_dump  # type: ignore[assignment]
        # The record a lend makes is the kernel's (an IPv6 address's event can
        # come after the change returns: the inventory is no source for it).
        ip("-n", self.ns, "link", "set", "hnaway", "up")
        ip("-n", self.ns, "addr", "add", "fd05::5/64", "dev", "hnaway", "nodad")
        facts = self.successResultOf(Deferred.fromCoroutine(host.inspect(home, with_record=True)))
        assert facts.state is not None
        self.assertIn("fd05::5", [a.address for a in facts.state.addresses])

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


class ParentDeviceTests(SynchronousTestCase):
    def test_the_kernels_parent_device_is_read_as_ip_shows_it(self) -> None:
        """The machine's own links, read only (nothing of them changes): the
        device each is on, from IFLA_PARENT_DEV_BUS_NAME and _NAME, and its
        PCI address where the bus is PCI."""
        if os.geteuid() != 0:
            raise SkipTest("reading the host's links needs root here")
        shown = json.loads(subprocess.run(["ip", "-d", "-j", "link", "show"], check=True,
                                          capture_output=True, text=True).stdout)
        read = {link.name: link for link in rtnl.dump_links()}
        on_devices = [link for link in shown if link.get("parentbus")]
        if not on_devices:
            raise SkipTest("no link of this machine is on a device")
        for link in on_devices:
            mine = read[link["ifname"]]
            self.assertEqual((mine.parent_bus, mine.parent_dev),
                             (link["parentbus"], link["parentdev"]))
            self.assertEqual(mine.pci, link["parentdev"] if link["parentbus"] == "pci" else None)
        self.assertTrue(all(read[l["ifname"]].parent_dev is None for l in shown
                            if not l.get("parentbus")))


class MonitorTurnTests(NetnsTestCase):
    def test_a_burst_is_read_a_slice_per_reactor_turn_and_a_lookup_reads_it_all(self) -> None:
        monitor = LinkMonitor(FakeReactor(), run_now)
        self.successResultOf(monitor.start())
        self.addCleanup(monitor.stop)
        import subprocess
        batch = "".join(f"link add s{i} type veth peer name t{i}\n" for i in range(150))
        subprocess.run(["ip", "-n", self.ns, "-batch", "-"], input=batch.encode(), check=True)
        heard: list[str] = []
        monitor.listeners.append(lambda msg_type, link: heard.append(link.name))
        before = len(monitor.inventory)
        monitor.doRead()  # one reactor turn
        after_one_turn = len(monitor.inventory)
        self.assertGreater(after_one_turn, before)
        self.assertLess(after_one_turn - before, 300)  # not the whole burst in one stretch
        self.assertEqual(heard, [])  # listeners hear a burst once it is read whole
        monitor.drain()  # as a lookup does
        self.assertEqual(len(monitor.inventory), 301)
        self.assertEqual(len(heard), 300)
        self.assertEqual({l.name for l in monitor.inventory.all()},
                         {l.name for l in dump_links()})
