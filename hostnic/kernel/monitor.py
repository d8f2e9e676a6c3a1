"""The NIC inventory: every link of the host namespace by index, MAC,
permanent address, PCI address and name, and every address by link, kept current from
netlink events so the request path neither dumps nor asks the kernel.

A raw ``AF_NETLINK`` socket bound to the link and address groups is read on
the reactor (it never blocks: each turn reads a slice of what is queued, and
the next turn reads on), decoded by
``hostnic.kernel.rtnl``'s small parser. Before a lookup the socket is drained, and
the kernel queues an event before the change that caused it returns, so a
drained inventory is the kernel's view: lookups need no confirming get. On
ENOBUFS (the kernel dropped events) the inventory resyncs from dumps taken in
a thread; while it resyncs, or recovers from a failed socket, it says it is
not ready and callers ask the kernel instead.

Listeners hear of events only once everything queued is applied: one that
looks a link up must see the kernel's view, not the middle of a burst (a
rename's "down" applied and its new name not yet, which looks like a lent
NIC come home under its own name).
"""

from __future__ import annotations

import collections
import errno
import socket
from typing import Any, Callable, Sequence

import attrs
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from hostnic.kernel.rtnl import (NETLINK_ROUTE, RECV_BUFFER, RTM_DELADDR, RTM_DELLINK, RTM_NEWADDR,
                          RTM_NEWLINK, RTMGRP_IPV4_IFADDR, RTMGRP_IPV6_IFADDR, RTMGRP_LINK,
                          AddrInfo, dump_addresses, dump_links, parse_messages)
from hostnic.state.model import Address, LinkInfo

Event = tuple[int, Any]  # (message type, LinkInfo or AddrInfo)


@attrs.define
class Inventory:
    """The host namespace's links by index, with MAC, permanent address and
    name indexes beside. Its size follows the links that exist: an index entry
    goes when its last link does (every bridge container brings a fresh MAC)."""

    _links: dict[int, LinkInfo] = attrs.field(factory=dict)
    _by_mac: dict[str, set[int]] = attrs.field(factory=dict)
    _by_perm: dict[str, set[int]] = attrs.field(factory=dict)
    _by_pci: dict[str, set[int]] = attrs.field(factory=dict)
    _by_name: dict[str, int] = attrs.field(factory=dict)
    # Links built on another of this namespace (VLAN, macvlan, a veth's
    # peer here), by that one's index: a guard asks at every lend.
    _by_lower: dict[int, set[int]] = attrs.field(factory=dict)
    _addresses: dict[int, dict[Address, None]] = attrs.field(factory=dict)  # in kernel order

    def apply_address(self, msg_type: int, addr: AddrInfo | None) -> None:
        if addr is None:
            return
        if msg_type == RTM_NEWADDR:
            self._addresses.setdefault(addr.index, {})[addr.address] = None
        else:
            held = self._addresses.get(addr.index)
            if held is not None:
                held.pop(addr.address, None)
                if not held:
                    del self._addresses[addr.index]

    def addresses(self, index: int) -> tuple[Address, ...]:
        return tuple(self._addresses.get(index, ()))

    def apply(self, msg_type: int, link: LinkInfo) -> LinkInfo | None:
        """Apply one link event; returns the previous record of that index."""
        if msg_type == RTM_DELLINK:
            self._addresses.pop(link.index, None)  # its addresses went with it
        previous = self._links.pop(link.index, None)
        if previous is not None:
            _discard(self._by_mac, previous.mac, link.index)
            _discard(self._by_perm, previous.perm, link.index)
            _discard(self._by_pci, previous.pci, link.index)
            if self._by_name.get(previous.name) == link.index:
                del self._by_name[previous.name]
            _discard(self._by_lower, _lower(previous), link.index)
        if msg_type == RTM_NEWLINK:
            self._links[link.index] = link
            if link.mac is not None:
                self._by_mac.setdefault(link.mac, set()).add(link.index)
            if link.perm is not None:
                self._by_perm.setdefault(link.perm, set()).add(link.index)
            if link.pci is not None:
                self._by_pci.setdefault(link.pci, set()).add(link.index)
            self._by_name[link.name] = link.index
            lower = _lower(link)
            if lower is not None:
                self._by_lower.setdefault(lower, set()).add(link.index)
        return previous

    def replace(self, links: Sequence[LinkInfo], addresses: Sequence[AddrInfo] = ()) -> None:
        for table in (self._links, self._by_mac, self._by_perm, self._by_pci, self._by_name,
                      self._by_lower, self._addresses):
            table.clear()
        for link in links:
            self.apply(RTM_NEWLINK, link)
        for addr in addresses:
            self.apply_address(RTM_NEWADDR, addr)

    def by_mac(self, mac: str) -> list[LinkInfo]:
        return sorted((self._links[i] for i in self._by_mac.get(mac, ())),
                      key=lambda link: link.index)

    def by_perm(self, perm: str) -> list[LinkInfo]:
        return sorted((self._links[i] for i in self._by_perm.get(perm, ())),
                      key=lambda link: link.index)

    def by_pci(self, pci: str) -> list[LinkInfo]:
        return sorted((self._links[i] for i in self._by_pci.get(pci, ())),
                      key=lambda link: link.index)

    def by_name(self, name: str) -> LinkInfo | None:
        index = self._by_name.get(name)
        return self._links.get(index) if index is not None else None

    def by_index(self, index: int) -> LinkInfo | None:
        return self._links.get(index)

    def built_on(self, index: int) -> list[LinkInfo]:
        """The links of this namespace whose lower link is ``index``."""
        return sorted((self._links[i] for i in self._by_lower.get(index, ())),
                      key=lambda link: link.index)

    def all(self) -> list[LinkInfo]:
        return sorted(self._links.values(), key=lambda link: link.index)

    def index_sizes(self) -> dict[str, int]:
        return {"links": len(self._links), "macs": len(self._by_mac),
                "perms": len(self._by_perm), "pcis": len(self._by_pci),
                "names": len(self._by_name),
                "lowers": len(self._by_lower),
                "addresses": len(self._addresses)}

    def __len__(self) -> int:
        return len(self._links)


def _lower(link: LinkInfo) -> int | None:
    """The index of the link ``link`` is built on, if it is in this namespace."""
    if link.link is None or link.link_netnsid is not None or link.link == link.index:
        return None
    return link.link


def _discard(index: dict[Any, set[int]], key: object, value: int) -> None:
    if key is None:
        return
    entries = index.get(key)
    if entries is not None:
        entries.discard(value)
        if not entries:
            del index[key]


LinkListener = Callable[[int, LinkInfo], None]
SocketFactory = Callable[[], socket.socket]


def event_socket(receive_buffer: int) -> socket.socket:
    """A non-blocking netlink socket subscribed to link events."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
    try:
        try:
            # Root may exceed net.core.rmem_max with SO_RCVBUFFORCE.
            sock.setsockopt(socket.SOL_SOCKET, 33, receive_buffer)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        sock.bind((0, RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


@attrs.define(eq=False)
class LinkMonitor:
    """Keeps an Inventory current; an ``IReadDescriptor`` on the reactor.

    It heals itself: if its socket fails or a resync's dump fails, it says so,
    stops claiming to be ready (so lookups confirm the slow way) and starts
    over after a pause that doubles up to ``max_backoff`` seconds.
    """

    reactor: Any
    run_in_thread: Callable[..., "Deferred[Any]"]
    inventory: Inventory = attrs.field(factory=Inventory)
    listeners: list[LinkListener] = attrs.field(factory=list)
    receive_buffer: int = 8 << 20  # room for bursts (1,000 veths at once)
    open_socket: SocketFactory | None = None
    max_backoff: float = 30.0
    reads_per_turn: int = 64  # events (one per read) per reactor turn: ~2 ms of parsing
    resyncs: int = 0
    failures: int = 0
    synced: bool = False
    _sock: socket.socket | None = None
    _buffered: list[Event] | None = None  # events during a resync
    _unheard: collections.deque[tuple[int, LinkInfo]] = attrs.field(factory=collections.deque)
    _draining: bool = False
    _dispatching: bool = False
    _stopped: bool = False
    _backoff: float = 0.0
    _retry: Any = None
    _generation: int = 0  # a recovery makes results of older resyncs void
    _synced_waiters: list["Deferred[None]"] = attrs.field(factory=list)
    log = Logger()

    def start(self) -> "Deferred[None]":
        """Subscribe first, then dump: no event between the two is lost."""
        self._stopped = False
        self._open()
        return self.resync()

    def _open(self) -> None:
        factory = self.open_socket or (lambda: event_socket(self.receive_buffer))
        self._sock = factory()
        self.reactor.addReader(self)

    def stop(self) -> None:
        self._stopped = True
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        self._close()

    def _close(self) -> None:
        if self._sock is not None:
            self.reactor.removeReader(self)
            self._sock.close()
            self._sock = None

    @property
    def ready(self) -> bool:
        """True once a dump has been applied and no resync or recovery is running."""
        return self.synced and self._buffered is None and self._sock is not None

    def when_ready(self) -> "Deferred[None]":
        if self.ready:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._synced_waiters.append(waiter)
        return waiter

    def resync(self) -> "Deferred[None]":
        if self._buffered is not None:
            return succeed(None)  # one resync at a time
        self._buffered = []
        self.resyncs += 1
        generation = self._generation

        def done(dumped: tuple[list[LinkInfo], list[AddrInfo]]) -> None:
            if generation != self._generation:
                return  # taken before a recovery: a newer resync follows
            buffered, self._buffered = self._buffered or [], None
            self.inventory.replace(*dumped)
            self.synced = True
            self._backoff = 0.0
            # Events are in kernel order and each carries a link's full state
            # (or adds or removes one address), so replaying those seen since
            # the dumps began leaves the latest.
            for msg_type, value in buffered:
                self._apply(msg_type, value)
            self.log.info("inventory resynced: {count} links", count=len(self.inventory))
            self._unheard.extend((RTM_NEWLINK, link) for link in self.inventory.all())
            self.drain()
            self._wake()

        def failed(failure: Failure) -> None:
            if generation != self._generation:
                return
            self._buffered = None
            self._recover(f"the link dump failed: {failure.getErrorMessage()}")

        d = self.run_in_thread(lambda: (dump_links(), dump_addresses()))
        d.addCallbacks(done, failed)
        return d

    def _apply(self, msg_type: int, value: Any) -> None:
        if msg_type in (RTM_NEWLINK, RTM_DELLINK):
            self.inventory.apply(msg_type, value)
        else:
            self.inventory.apply_address(msg_type, value)

    def _wake(self) -> None:
        if self.ready:
            waiters, self._synced_waiters = self._synced_waiters, []
            for waiter in waiters:
                waiter.callback(None)

    def _recover(self, why: str) -> None:
        """Start over (new socket, fresh dump) after a pause."""
        self.failures += 1
        self.synced = False
        self._generation += 1
        self._buffered = None
        self._close()
        if self._stopped:
            return
        self._backoff = min(self.max_backoff, max(0.1, self._backoff * 2))
        self.log.error("link monitor failed ({why}); the inventory is not current: "
                       "starting over in {delay:.1f}s", why=why, delay=self._backoff)
        if self._retry is None or not self._retry.active():
            self._retry = self.reactor.callLater(self._backoff, self._restart)

    def _restart(self) -> None:
        self._retry = None
        if self._stopped:
            return
        try:
            self._open()
        except OSError as e:
            self._recover(f"cannot open a netlink socket: {e}")
            return
        self.resync()

    def drain(self, budget: int | None = None) -> None:
        """Apply every event the kernel has queued so far (call before a lookup
        that must see changes made just before this request), then tell the
        listeners. With a ``budget``, at most that many reads: the reactor's
        turn, which comes again while more is queued."""
        if self._draining:
            return  # the drain under way reads on, then tells the listeners
        emptied = True
        if self._sock is not None:
            self._draining = True
            try:
                emptied = self._drain(self._sock, budget)
            finally:
                self._draining = False
        if emptied:  # (a burst read only in part is told once it is read whole)
            self._dispatch()

    def _dispatch(self) -> None:
        # A listener may look a link up, and so drain: what that reads joins
        # the queue, and this loop tells it in kernel order (not nested, so a
        # burst of events cannot run past the recursion limit).
        if self._dispatching:
            return
        self._dispatching = True
        try:
            while self._unheard:
                self._notify(*self._unheard.popleft())
        finally:
            self._dispatching = False

    def _drain(self, sock: socket.socket, budget: int | None = None) -> bool:
        """Apply what is queued (at most ``budget`` reads); False if the
        budget ran out before the queue did."""
        reads = 0
        while self._sock is sock:
            if budget is not None and reads >= budget:
                return False
            reads += 1
            try:
                data = sock.recv(RECV_BUFFER)
            except BlockingIOError:
                return True
            except OSError as e:
                if e.errno == errno.ENOBUFS:
                    self.log.warn("netlink overflow: link events were lost; resyncing")
                    self.resync()
                    continue
                self._recover(f"reading link events failed: {e}")
                return True
            if not data:
                self._recover("the netlink socket was closed")
                return True
            for msg_type, value in parse_messages(data):
                if msg_type in (RTM_NEWLINK, RTM_DELLINK, RTM_NEWADDR, RTM_DELADDR):
                    if self._buffered is not None:
                        self._buffered.append((msg_type, value))
                    else:
                        self._apply(msg_type, value)
                        if msg_type in (RTM_NEWLINK, RTM_DELLINK):
                            self._unheard.append((msg_type, value))
        return True  # (the socket went: there is nothing more to read)

    def _notify(self, msg_type: int, link: LinkInfo) -> None:
        for listener in self.listeners:
            try:
                listener(msg_type, link)
            except Exception:
                self.log.failure("link listener failed")

    # IReadDescriptor
    def fileno(self) -> int:
        return self._sock.fileno() if self._sock is not None else -1

    def doRead(self) -> None:
        # A burst of events (2,000 links flapping) is read a slice per reactor
        # turn, not in one stretch that holds every request behind it; the
        # socket stays readable, so the next turn reads on. A lookup still
        # drains it all first.
        self.drain(budget=self.reads_per_turn)

    def connectionLost(self, reason: Failure) -> None:
        if not self._stopped and self._sock is not None:
            self._recover(f"the reactor dropped the socket: {reason.getErrorMessage()}")

    def logPrefix(self) -> str:
        return "hostnic-monitor"
