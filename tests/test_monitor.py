"""The netlink message parser and the inventory's resync ordering."""

from __future__ import annotations

import errno
import socket
import struct

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from hostnic.kernel.monitor import Inventory, LinkMonitor
from hostnic.kernel.rtnl import (RTM_DELADDR, RTM_DELLINK, RTM_NEWADDR, RTM_NEWLINK, AddrInfo,
                          parse_messages)
from hostnic.state.model import IFF_UP, Address, LinkInfo


def rtattr(kind: int, value: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(value), kind) + value
    return raw + b"\0" * ((4 - len(raw) % 4) % 4)


def link_message(msg_type: int, index: int, name: str, mac: bytes, kind: str | None = None,
                 up: bool = True) -> bytes:
    attrs = rtattr(3, name.encode() + b"\0") + rtattr(1, mac) + rtattr(4, struct.pack("=I", 1500))
    if kind:
        attrs += rtattr(18, rtattr(1, kind.encode() + b"\0"))
    body = struct.pack("=BxHiII", socket.AF_UNSPEC, 1, index, IFF_UP if up else 0, 0) + attrs
    return struct.pack("=IHHII", 16 + len(body), msg_type, 0, 0, 0) + body


class ParserTests(SynchronousTestCase):
    def test_link_messages(self) -> None:
        data = (link_message(RTM_NEWLINK, 7, "ens4", bytes.fromhex("525400e1d9e1"), "veth")
                + link_message(RTM_DELLINK, 8, "lo", b"\0" * 6))
        (t1, l1), (t2, l2) = list(parse_messages(data))
        self.assertEqual((t1, l1), (RTM_NEWLINK, LinkInfo(7, "ens4", "52:54:00:e1:d9:e1",
                                                          1500, IFF_UP, "veth")))
        self.assertEqual((t2, l2.index, l2.kind), (RTM_DELLINK, 8, None))
        self.assertTrue(l1.up)

    def test_truncated_data_stops_cleanly(self) -> None:
        data = link_message(RTM_NEWLINK, 7, "ens4", b"\1" * 6)
        self.assertEqual(list(parse_messages(data[:10])), [])


class InventoryTests(SynchronousTestCase):
    def test_mac_index_follows_events(self) -> None:
        inv = Inventory()
        a = LinkInfo(2, "a", "02:00:00:00:00:01", 1500, 0, None)
        inv.apply(RTM_NEWLINK, a)
        inv.apply(RTM_NEWLINK, LinkInfo(2, "renamed", "02:00:00:00:00:02", 1500, 0, None))
        self.assertEqual(inv.by_mac("02:00:00:00:00:01"), [])
        self.assertEqual(inv.by_mac("02:00:00:00:00:02")[0].name, "renamed")
        inv.apply(RTM_DELLINK, a)
        self.assertEqual(len(inv), 0)

    def test_index_entries_go_with_their_links(self) -> None:
        # Every bridge container on a Docker host brings a fresh MAC: the
        # inventory must not keep an entry per MAC it ever saw.
        inv = Inventory()
        for i in range(1000):
            link = LinkInfo(100 + i, f"veth{i}", f"02:00:00:00:{i // 256:02x}:{i % 256:02x}",
                            1500, 0, "veth", perm=f"02:11:00:00:{i // 256:02x}:{i % 256:02x}",
                            link=2000 + i,  # its peer, here
                            parent_bus="pci", parent_dev=f"0000:{i // 32:02x}:{i % 32:02x}.0")
            inv.apply(RTM_NEWLINK, link)
            self.assertEqual(inv.by_pci(link.parent_dev or ""), [link])
            inv.apply(RTM_DELLINK, link)
        self.assertEqual(inv.index_sizes(), {"links": 0, "macs": 0, "perms": 0, "pcis": 0,
                                             "names": 0, "lowers": 0, "addresses": 0})

    def test_links_built_on_another_follow_events(self) -> None:
        inv = Inventory()
        nic = LinkInfo(2, "ens4", "02:00:00:00:00:01", 1500, 0, None)
        vlan = LinkInfo(3, "ens4.7", "02:00:00:00:00:01", 1500, 0, "vlan", link=2)
        inv.apply(RTM_NEWLINK, nic)
        inv.apply(RTM_NEWLINK, vlan)
        self.assertEqual(inv.built_on(2), [vlan])
        # A veth whose peer is in another namespace names an index there.
        inv.apply(RTM_NEWLINK, LinkInfo(4, "veth0", "02:00:00:00:00:04", 1500, 0, "veth",
                                        link=2, link_netnsid=0))
        self.assertEqual(inv.built_on(2), [vlan])
        inv.apply(RTM_DELLINK, vlan)
        self.assertEqual(inv.built_on(2), [])
        self.assertEqual(inv.index_sizes()["lowers"], 0)

    def test_addresses_follow_events_and_go_with_their_link(self) -> None:
        inv = Inventory()
        link = LinkInfo(2, "ens4", "02:00:00:00:00:01", 1500, 0, None)
        inv.apply(RTM_NEWLINK, link)
        v4, v6 = Address(2, "10.0.0.5", 24), Address(10, "fd00::5", 64)
        inv.apply_address(RTM_NEWADDR, AddrInfo(2, v4))
        inv.apply_address(RTM_NEWADDR, AddrInfo(2, v6))
        inv.apply_address(RTM_NEWADDR, AddrInfo(2, v4))  # replayed after a resync
        self.assertEqual(inv.addresses(2), (v4, v6))
        inv.apply_address(RTM_DELADDR, AddrInfo(2, v4))
        self.assertEqual(inv.addresses(2), (v6,))
        inv.apply(RTM_DELLINK, link)  # moved to a container: its addresses are flushed
        self.assertEqual(inv.addresses(2), ())
        self.assertEqual(inv.index_sizes()["addresses"], 0)

    def test_perm_and_name_indexes(self) -> None:
        inv = Inventory()
        inv.apply(RTM_NEWLINK, LinkInfo(2, "ens4", "02:00:00:00:00:01", 1500, 0, None,
                                        perm="52:54:00:00:00:01"))
        inv.apply(RTM_NEWLINK, LinkInfo(2, "hnabc", "02:00:00:00:00:09", 1500, 0, None,
                                        perm="52:54:00:00:00:01"))
        self.assertEqual(inv.by_perm("52:54:00:00:00:01")[0].name, "hnabc")
        self.assertIsNone(inv.by_name("ens4"))
        self.assertEqual(inv.by_name("hnabc").index, 2)  # type: ignore[union-attr]


class FakeSocket:
    """A netlink socket whose datagrams and failures the test decides."""

    def __init__(self) -> None:
        self.queue: list[bytes | OSError] = []
        self.closed = False

    def recv(self, size: int) -> bytes:
        if self.closed:
            raise OSError(errno.EBADF, "Bad file descriptor")
        if not self.queue:
            raise BlockingIOError()
        item = self.queue.pop(0)
        if isinstance(item, OSError):
            raise item
        return item

    def fileno(self) -> int:
        return -1 if self.closed else 99

    def close(self) -> None:
        self.closed = True


class MonitorReactor(Clock):
    def __init__(self) -> None:
        super().__init__()
        self.readers: list[object] = []

    def addReader(self, reader: object) -> None:
        self.readers.append(reader)

    def removeReader(self, reader: object) -> None:
        self.readers.remove(reader)


class MonitorTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MonitorReactor()
        self.sockets: list[FakeSocket] = []
        self.dumps: list[Deferred[list[LinkInfo]]] = []

        def open_socket() -> FakeSocket:
            self.sockets.append(FakeSocket())
            return self.sockets[-1]

        def dump(f: object) -> Deferred[list[LinkInfo]]:
            self.dumps.append(Deferred())
            return self.dumps[-1]

        self.monitor = LinkMonitor(self.reactor, dump, open_socket=open_socket)  # type: ignore[arg-type]
        self.monitor.start()

    def test_events_during_a_resync_are_replayed_on_top_of_the_dump(self) -> None:
        self.assertFalse(self.monitor.ready)
        new = LinkInfo(5, "new", "02:00:00:00:00:05", 1500, 0, None)
        gone = LinkInfo(3, "gone", "02:00:00:00:00:03", 1500, 0, None)
        self.sockets[0].queue += [link_message(RTM_NEWLINK, 5, "new", bytes.fromhex("020000000005")),
                                  link_message(RTM_DELLINK, 3, "gone", bytes.fromhex("020000000003"))]
        self.monitor.drain()  # arrived while dumping
        self.dumps[0].callback(([gone, LinkInfo(4, "kept", "02:00:00:00:00:04", 1500, 0, None)], []))
        self.assertTrue(self.monitor.ready)
        self.assertEqual([l.name for l in self.monitor.inventory.all()], ["kept", "new"])
        self.assertEqual(new.index, 5)

    def test_listeners_hear_of_an_event_once_the_burst_is_applied(self) -> None:
        # A lend renames a NIC in two steps (down, then the new name). A
        # listener that hears "ens9 is down" and looks the link up must find
        # its new name, as the kernel has it, not the half-done rename: a lent
        # NIC seemingly home under its own name gets restored, and the
        # container then finds no link to take.
        mac = bytes.fromhex("020000000007")
        self.dumps[0].callback(([LinkInfo(7, "ens9", "02:00:00:00:00:07", 1500, 0, None)], []))
        heard: list[tuple[str, str]] = []

        def listener(msg_type: int, link: LinkInfo) -> None:
            self.monitor.drain()  # as NetlinkHost.locate does
            now = self.monitor.inventory.by_index(7)
            heard.append((link.name, now.name if now else "-"))

        self.monitor.listeners.append(listener)
        self.sockets[0].queue += [link_message(RTM_NEWLINK, 7, "ens9", mac, up=False),
                                  link_message(RTM_NEWLINK, 7, "hntransit", mac, up=False)]
        self.monitor.doRead()
        self.assertEqual(heard, [("ens9", "hntransit"), ("hntransit", "hntransit")])

    def test_a_failed_socket_is_reopened_and_resynced(self) -> None:
        self.dumps[0].callback(([LinkInfo(4, "old", "02:00:00:00:00:04", 1500, 0, None)], []))
        self.assertTrue(self.monitor.ready)
        self.sockets[0].queue.append(OSError(errno.EBADF, "Bad file descriptor"))
        self.monitor.doRead()
        # It says so and stops claiming to be current (lookups go the slow way)...
        self.assertFalse(self.monitor.ready)
        self.assertEqual(self.monitor.failures, 1)
        self.assertEqual(self.reactor.readers, [])
        self.flushLoggedErrors()
        # ...then starts over: a new socket first, then a fresh dump.
        self.reactor.advance(0.1)
        self.assertEqual(len(self.sockets), 2)
        self.assertEqual(self.reactor.readers, [self.monitor])
        waiting = self.monitor.when_ready()
        self.assertNoResult(waiting)
        self.dumps[1].callback(([LinkInfo(6, "now", "02:00:00:00:00:06", 1500, 0, None)], []))
        self.successResultOf(waiting)
        self.assertEqual([l.name for l in self.monitor.inventory.all()], ["now"])

    def test_a_failed_dump_is_retried_later_with_backoff(self) -> None:
        self.dumps[0].errback(OSError(errno.ENOMEM, "Cannot allocate memory"))
        self.assertFalse(self.monitor.ready)
        self.reactor.advance(0.1)
        self.dumps[1].errback(OSError(errno.ENOMEM, "Cannot allocate memory"))
        self.reactor.advance(0.1)
        self.assertEqual(len(self.dumps), 2)  # the pause doubled
        self.reactor.advance(0.1)
        self.dumps[2].callback(([], []))
        self.assertTrue(self.monitor.ready)
        self.flushLoggedErrors()

    def test_the_reactor_dropping_the_socket_is_a_failure_too(self) -> None:
        self.dumps[0].callback(([], []))
        self.monitor.connectionLost(Failure(OSError("gone")))
        self.assertFalse(self.monitor.ready)
        self.reactor.advance(1)
        self.assertEqual(len(self.sockets), 2)
        self.flushLoggedErrors()

    def test_stop_is_not_a_failure(self) -> None:
        self.monitor.stop()
        self.reactor.advance(60)
        self.assertEqual((len(self.sockets), self.monitor.failures), (1, 0))
