"""The netlink message parser and the inventory's resync ordering."""

from __future__ import annotations

import socket
import struct

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from hostnic.linkwatch import (IFF_UP, RTM_DELLINK, RTM_NEWLINK, Inventory, LinkInfo,
                               LinkMonitor, parse_messages)


def rtattr(kind: int, value: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(value), kind) + value
    return raw + b"\0" * ((4 - len(raw) % 4) % 4)


def link_message(msg_type: int, index: int, name: str, mac: bytes, kind: str | None = None) -> bytes:
    attrs = rtattr(3, name.encode() + b"\0") + rtattr(1, mac) + rtattr(4, struct.pack("=I", 1500))
    if kind:
        attrs += rtattr(18, rtattr(1, kind.encode() + b"\0"))
    body = struct.pack("=BxHiII", socket.AF_UNSPEC, 1, index, IFF_UP, 0) + attrs
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

    def test_events_during_a_resync_are_replayed_on_top_of_the_dump(self) -> None:
        dump: Deferred[list[LinkInfo]] = Deferred()
        monitor = LinkMonitor(reactor=None, run_in_thread=lambda f: dump)
        monitor.resync()
        self.assertFalse(monitor.ready)
        new = LinkInfo(5, "new", "02:00:00:00:00:05", 1500, 0, None)
        monitor._buffered.append((RTM_NEWLINK, new))  # arrived while dumping
        gone = LinkInfo(3, "gone", "02:00:00:00:00:03", 1500, 0, None)
        monitor._buffered.append((RTM_DELLINK, gone))
        dump.callback([gone, LinkInfo(4, "kept", "02:00:00:00:00:04", 1500, 0, None)])
        self.assertTrue(monitor.ready)
        self.assertEqual([l.name for l in monitor.inventory.all()], ["kept", "new"])
