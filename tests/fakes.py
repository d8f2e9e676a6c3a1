"""Faithful in-memory stand-ins for the host namespace and the disk, for unit
tests.

``FakeHost`` models what the core relies on from the kernel, step by step as
``hostnic.kernel.changes`` drives it: unique names per namespace; a rename is "set
down" then "rename", so a rename that fails leaves the link down; a namespace
move flushes addresses and leaves the link down (as dockerd returns it); the
kernel returns a physical NIC under its in-container name (or ``dev<N>``);
every change of a host link is a link event. Every call can be made to wait
(``pause``) so tests choose the interleaving, and can be made to fail.

While its inventory is not ready (``inventory_ready = False``, as the real
host's is before its first dump and while it resyncs after lost events),
``known`` and ``all_links`` answer from the last view it had, and lookups
ask the "kernel" (the links as they are now), as the real host does.

``tests/host_contract.py`` holds what both hosts must do alike; it runs over
this fake in the unit tests and over the real netlink host in netns tests.

``FaultyFileSystem`` is ``os`` for the store, with short writes, a full disk
and crashes between any two steps.
"""

from __future__ import annotations

import errno
import os
import socket
from typing import Any, Callable

import attrs
from twisted.internet.defer import Deferred, maybeDeferred

from hostnic.core.ports import HostPort, HostSurvey, Sandbox
from hostnic.errors import HostError, StoreError
from hostnic.kernel.host import uppers_of
from hostnic.kernel.record import adoption
from hostnic.state.model import (IFF_LOOPBACK, IFF_UP, Address, Adopted, Inside, LinkFacts,
                                 LinkInfo, NicRef, NicState, Route, proven)

V4, V6 = socket.AF_INET, socket.AF_INET6


def run_now(f: Callable[..., Any], *args: Any, **kwargs: Any) -> "Deferred[Any]":
    """A synchronous stand-in for deferToThread."""
    return maybeDeferred(f, *args, **kwargs)


DEFAULT_SYSCTLS = {"ipv4/rp_filter": "0", "ipv6/accept_ra": "1", "ipv4/arp_ignore": "0"}


@attrs.define
class Threads:
    """The store's thread port: the work runs at once, unless a test puts
    another runner in (``gated``, a full-disk stand-in)."""

    run: Callable[..., "Deferred[Any]"] = run_now

    def __call__(self, f: Callable[..., Any], *args: Any) -> "Deferred[Any]":
        return self.run(f, *args)


@attrs.define
class FakeLink:
    index: int
    name: str
    mac: str
    mtu: int = 1500
    up: bool = False
    kind: str | None = None
    loopback: bool = False
    addresses: list[Address] = attrs.field(factory=list)
    where: str = "host"  # "host" or a sandbox key
    perm: str | None = None
    routes: list[Route] = attrs.field(factory=list)
    sysctls: dict[str, str] = attrs.field(factory=lambda: dict(DEFAULT_SYSCTLS))
    alias: str | None = None
    altnames: tuple[str, ...] = ()
    txqlen: int = 1000
    group: int = 0
    master: int | None = None  # a bridge or bond it is a port of
    link: int | None = None  # the link it sits on (a macvlan's parent)
    pci: str | None = None  # the PCI device it is on (a physical NIC, an SR-IOV VF)
    # The bus the kernel names as its parent: "pci", or "virtio" for a virtio
    # NIC (its parent is the virtio device; the PCI address is in sysfs).
    parent_bus: str = "pci"

    def info(self) -> LinkInfo:
        flags = (IFF_UP if self.up else 0) | (IFF_LOOPBACK if self.loopback else 0)
        return LinkInfo(self.index, self.name, self.mac, self.mtu, flags, self.kind, self.perm,
                        master=self.master, link=self.link, alias=self.alias,
                        altnames=self.altnames, txqlen=self.txqlen, group=self.group,
                        parent_bus=self.parent_bus if self.pci else None,
                        parent_dev=(self.pci if self.parent_bus == "pci" else "virtio0")
                        if self.pci else None)

    def state(self) -> NicState:
        return NicState(self.name, self.mac, self.mtu, self.up, tuple(self.addresses),
                        tuple(self.routes), tuple(sorted(self.sysctls.items())), self.alias,
                        self.altnames, self.txqlen, self.group, index=self.index)

    def leaves_namespace(self) -> None:
        """What a namespace move does: addresses and routes flushed, the
        per-device sysctls the new namespace's defaults, the link down."""
        self.up, self.addresses, self.routes = False, [], []
        self.sysctls = dict(DEFAULT_SYSCTLS)


Pause = Callable[[str, Any], "Deferred[None] | None"]


@attrs.define
class FakeHost:
    """Implements hostnic.core.ports.HostPort over in-memory links."""

    links: dict[int, FakeLink] = attrs.field(factory=dict)
    default_route_indexes: set[int] = attrs.field(factory=set)
    gate: "Deferred[None] | None" = None  # when set, every host call waits on it
    pause: Pause | None = None  # called at each step; a Deferred returned is waited for
    before_change: Callable[[FakeLink, str], None] | None = None  # invariant checks
    fail: dict[str, HostError] = attrs.field(factory=dict)  # step -> the error, once
    live_namespaces: set[str] = attrs.field(factory=set)
    pci: dict[str, str] = attrs.field(factory=dict)
    read_only_sysctls: set[str] = attrs.field(factory=set)
    now: Callable[[], float] = lambda: 1000.0  # the wall clock lease lifetimes age by
    calls: list[tuple[str, Any]] = attrs.field(factory=list)
    _callbacks: list[Callable[[LinkInfo], None]] = attrs.field(factory=list)
    _next_index: int = 2
    _view: list[LinkInfo] | None = None  # the inventory's last view, while not ready

    # -- test-side controls ----------------------------------------------

    def add(self, name: str, mac: str, **kwargs: Any) -> FakeLink:
        """A link appears in the host namespace (a link event, as in the kernel)."""
        link = FakeLink(self._next_index, name, mac, **kwargs)
        self._next_index += 1
        self.links[link.index] = link
        self._event(link)
        return link

    def add_inside(self, where: str, name: str, mac: str, **kwargs: Any) -> FakeLink:
        """A link appears inside a namespace (no host event)."""
        link = FakeLink(self._next_index, name, mac, where=where, **kwargs)
        self._next_index += 1
        self.links[link.index] = link
        return link

    def rename_outside(self, link: FakeLink, name: str) -> None:
        """Another tool renames a host link (as the kernel would, or refuses)."""
        if self._host_name_taken(name, link.index):
            raise OSError(errno.EEXIST, os.strerror(errno.EEXIST))
        link.name = name
        self._event(link)

    def by_mac(self, mac: str) -> FakeLink:
        return next(link for link in self.links.values() if link.mac == mac)

    def by_perm(self, perm: str) -> FakeLink:
        return next(link for link in self.links.values() if link.perm == perm)

    def home(self) -> list[FakeLink]:
        return [link for link in self.links.values() if link.where == "host"]

    def _host_name_taken(self, name: str, but: int) -> bool:
        return any(l.name == name and l.where == "host" and l.index != but
                   for l in self.links.values())

    def dockerd_moves_in(self, name: str, sandbox: str, address: str,
                         index_taken: bool = False) -> FakeLink:
        """What dockerd does after Join: move by name, rename ethN, configure.
        ``index_taken``: the container's namespace holds the link's interface
        index already, so the kernel gives it a new one (kept on the way back)."""
        link = next(l for l in self.links.values() if l.name == name and l.where == "host")
        taken = {l.name for l in self.links.values() if l.where == sandbox}
        if name in taken:
            raise OSError(17, "File exists")
        if index_taken:
            del self.links[link.index]
            link.index, self._next_index = self._next_index, self._next_index + 1
            self.links[link.index] = link
        link.leaves_namespace()
        link.where, link.up, link.addresses = sandbox, True, [Address(V4, address, 24)]
        self.live_namespaces.add(sandbox)
        link.name = next(f"eth{i}" for i in range(100) if f"eth{i}" not in taken)
        return link

    def dockerd_moves_back(self, nic: str | FakeLink, src_name: str) -> None:
        """What dockerd does after Leave: down, rename to SrcName, move home."""
        link = nic if isinstance(nic, FakeLink) else self.by_mac(nic)
        link.leaves_namespace()
        link.name, link.where = src_name, "host"
        self._event(link)

    def kernel_returns(self, nic: str | FakeLink) -> FakeLink:
        """A dying namespace hands a physical NIC back under its inner name."""
        link = nic if isinstance(nic, FakeLink) else self.by_mac(nic)
        self.live_namespaces.discard(link.where)
        name = link.name if not self._host_name_taken(link.name, link.index) \
            else f"dev{link.index}"
        link.leaves_namespace()
        link.name, link.where = name, "host"
        self._event(link)
        return link

    def detach(self) -> None:
        """The process that listened for link events is gone."""
        self._callbacks.clear()

    @property
    def inventory_ready(self) -> bool:
        return self._view is None

    @inventory_ready.setter
    def inventory_ready(self, ready: bool) -> None:
        """Not ready: the inventory keeps the view it had (events were lost)."""
        self._view = None if ready else self._links_now()

    def _links_now(self) -> list[LinkInfo]:
        return [l.info() for l in sorted(self.home(), key=lambda l: l.index)]

    def _inventory(self) -> list[LinkInfo]:
        return self._links_now() if self._view is None else list(self._view)

    def _event(self, link: FakeLink) -> None:
        if link.where == "host":
            for callback in list(self._callbacks):
                callback(link.info())

    async def _step(self, call: str, arg: Any) -> None:
        self.calls.append((call, arg))
        if self.pause is not None:
            waiting = self.pause(call, arg)
            if waiting is not None:
                await waiting
        if self.gate is not None:
            await self.gate
        error = self.fail.pop(call, None)
        if error is not None:
            raise error

    def _change(self, link: FakeLink, what: str) -> None:
        if self.before_change is not None:
            self.before_change(link, what)

    def _home_link(self, index: int) -> FakeLink:
        link = self.links.get(index)
        if link is None or link.where != "host":
            raise HostError(f"interface {index} vanished from the host")
        return link

    # -- HostPort ---------------------------------------------------------

    async def start(self) -> None:
        self.inventory_ready = True  # the first dump

    def stop(self) -> None:
        self.detach()

    def on_link_appeared(self, callback: Callable[[LinkInfo], None]) -> None:
        self._callbacks.append(callback)

    def known(self, nic: NicRef) -> list[LinkInfo]:
        return [l for l in self._inventory() if nic.matches(l.mac, l.perm, l.pci)]

    async def locate(self, nic: NicRef, transit_name: str | None = None,
                     lent_index: int | None = None) -> LinkInfo | None:
        await self._step("locate", nic.mac)
        links = sorted(self.home(), key=lambda l: (l.name != transit_name, l.index))
        found = [l for l in links if (transit_name is not None and l.name == transit_name)
                 or nic.matches(l.mac, l.perm, l.pci)]
        answer = proven(nic, [l.info() for l in found], lent_index)
        await self._step("locate.answered", nic.mac)  # the answer may be stale by now
        return answer

    async def locate_name(self, name: str) -> LinkInfo | None:
        await self._step("locate_name", name)
        return next((l.info() for l in self.home() if l.name == name), None)

    async def locate_pci(self, pci: str) -> list[LinkInfo]:
        await self._step("locate_pci", pci)
        return [l.info() for l in sorted(self.home(), key=lambda l: l.index) if l.pci == pci]

    async def inspect(self, link: LinkInfo, with_record: bool = False) -> LinkFacts:
        await self._step("inspect", link.index)  # one thread hop, as the real host's
        current = self._home_link(link.index)
        master, uppers = uppers_of(self._links_now(), link.index)  # the real host's rule
        state = (attrs.evolve(current.state(), recorded_at=self.now()) if with_record
                 else None)
        return LinkFacts(current.info(), master, tuple(uppers),
                         link.index in self.default_route_indexes, state)

    async def adopt(self, index: int) -> Adopted:
        await self._step("adopt", index)
        link = self._home_link(index)
        return adoption(link.addresses, link.routes, self.now())  # the real selection


    async def rename(self, index: int, name: str) -> None:
        # As changes.rename: down first (the kernel refuses to rename an up
        # link), then the rename; if that fails the link stays down.
        await self._step("rename.down", (index, name))
        link = self._home_link(index)
        self._change(link, "down")
        link.up = False
        self._event(link)
        await self._step("rename", (index, name))
        link = self._home_link(index)
        if self._host_name_taken(name, index):
            raise HostError(f"could not rename interface {index} to {name}: File exists")
        self._change(link, "rename")
        link.name = name
        self._event(link)

    async def restore(self, index: int, original: NicState) -> tuple[str, ...]:
        # As netlink.restore: each step on its own, in the kernel's order; a
        # step that fails is reported.
        await self._step("restore", index)
        link = self._home_link(index)
        self._change(link, "restore")
        problems = []
        if link.name != original.name:
            link.up = False
            if self._host_name_taken(original.name, index):
                problems.append(f"name {original.name}: File exists")
            else:
                link.name = original.name
        link.mtu = original.mtu
        if original.mac:
            link.mac = original.mac
        link.txqlen = original.txqlen if original.txqlen is not None else link.txqlen
        link.group = original.group if original.group is not None else link.group
        link.alias = original.alias
        link.altnames = tuple(dict.fromkeys(link.altnames + original.altnames))
        for key, value in original.sysctls:
            if key in self.read_only_sysctls:
                problems.append(f"sysctl {key}={value}: Permission denied")
            else:
                link.sysctls[key] = value
        present = {a.key for a in link.addresses}
        elapsed = int(self.now() - original.recorded_at) if original.recorded_at else 0
        for address in original.addresses:
            if address.key in present or address.privacy:
                continue  # privacy addresses are the kernel's to make again
            if address.valid is not None and address.valid - elapsed <= 0:
                problems.append(f"address {address}: its lease ran out while the NIC was lent")
                continue
            valid = None if address.valid is None else address.valid - elapsed
            link.addresses.append(attrs.evolve(address, valid=valid))
        link.up = original.up
        if link.up:  # the kernel takes routes only through a link that is up
            for route in original.routes:
                if route not in link.routes:
                    link.routes.append(route)
        self._event(link)
        return tuple(problems)

    def all_links(self) -> list[LinkInfo]:
        return self._inventory()

    async def survey(self) -> HostSurvey:
        await self._step("survey", None)
        links = self.all_links()
        return HostSurvey(links, {l.index: list(l.addresses) for l in self.home()},
                          {l.name: self.pci.get(l.name) for l in links if l.mac},
                          set(self.default_route_indexes))

    async def namespace_exists(self, path: str) -> bool:
        await self._step("namespace_exists", path)
        return path in self.live_namespaces

    def _inside(self, sandbox: Sandbox) -> list[FakeLink]:
        return [l for l in self.links.values() if l.where == sandbox.key]

    async def move_into(self, index: int, sandbox: Sandbox, name: str) -> LinkInfo:
        # As sandbox.move_in: a name taken there is refused first; then the
        # link moves (reset, as every move resets it) and is renamed there.
        await self._step("move_into", (index, sandbox.key, name))
        link = self._home_link(index)
        if any(l.name == name for l in self._inside(sandbox)):
            raise HostError(f"an interface named {name} exists in {sandbox.key} already")
        self._change(link, "move_into")
        link.leaves_namespace()
        link.where, link.name = sandbox.key, name
        self.live_namespaces.add(sandbox.key)
        return link.info()

    async def configure_in(self, sandbox: Sandbox, index: int, mtu: int | None,
                           addresses: tuple[Address, ...], routes: tuple[Route, ...]) -> None:
        await self._step("configure_in", (sandbox.key, index))
        link = next((l for l in self._inside(sandbox) if l.index == index), None)
        if link is None:
            raise HostError(f"configuring interface {index} in {sandbox.key}: "
                            f"No such device")
        self._change(link, "configure_in")
        if mtu is not None:
            link.mtu = mtu
        for address in addresses:
            if any(a.key == address.key for a in link.addresses):
                raise HostError(f"configuring interface {index} in {sandbox.key}: "
                                f"address {address}: File exists")
            link.addresses.append(address)
        link.up = True
        for route in routes:
            if route in link.routes:
                raise HostError(f"configuring interface {index} in {sandbox.key}: "
                                f"route {route}: File exists")
            link.routes.append(route)

    async def look_in(self, sandbox: Sandbox, name: str) -> Inside | None:
        await self._step("look_in", (sandbox.key, name))
        link = next((l for l in self._inside(sandbox) if l.name == name), None)
        if link is None:
            return None
        return Inside(link.info(), tuple(link.addresses), tuple(link.routes))

    async def bring_home(self, sandbox: Sandbox, nic: NicRef, name: str, home_name: str,
                         lent_index: int | None) -> LinkInfo | None:
        # As sandbox.bring_home: the link under ``name`` if it proves to be the
        # NIC, else any link there that does.
        await self._step("bring_home", (sandbox.key, nic.mac))
        inside = self._inside(sandbox)
        named = [l.info() for l in inside if l.name == name]
        found = proven(nic, named, lent_index) or proven(
            nic, [l.info() for l in inside if nic.matches(l.mac, l.perm, l.pci)], lent_index)
        if found is None:
            return None
        link = self.links[found.index]
        # Renamed there first (down), then moved, which a name taken at home stops.
        if any(l.name == home_name and l is not link for l in inside):
            raise HostError(f"bringing NIC {nic.mac} home: renaming {link.name} to "
                            f"{home_name} in {sandbox.key}: File exists")
        self._change(link, "bring_home")
        link.up, link.name = False, home_name
        if self._host_name_taken(home_name, link.index):
            raise HostError(f"moving {home_name} home from {sandbox.key}: an interface "
                            f"of that name is there")
        link.leaves_namespace()
        link.where, link.name = "host", home_name
        self._event(link)
        return link.info()


@attrs.define(eq=False)
class FakeSandbox:
    """A namespace handed over, by the path it was named by."""

    key: str
    closed: bool = False

    def close(self) -> None:
        assert not self.closed, f"{self.key} closed twice"
        self.closed = True


class DeadHost:
    """The host as a crashed process's leftover code meets it."""

    def __getattr__(self, name: str) -> Any:
        def dead(*args: Any, **kwargs: Any) -> Any:
            raise HostError("this process has died")
        return dead


class DeadStore:
    def save(self, *args: Any) -> Any:
        raise StoreError("this process has died")


def _implements_the_port(host: FakeHost) -> HostPort:
    return host  # mypy checks that FakeHost offers every method HostPort names


class Crash(BaseException):
    """The process died here (BaseException: no ``except Exception`` stops it)."""


@attrs.define
class FaultyFileSystem:
    """``os`` for the store's writes, with faults on demand:

    - ``space``: bytes the disk still takes (a write past it is cut short,
      the next one fails with ENOSPC, as on a full filesystem);
    - ``crash_at``: a step name (``write``, ``fsync``, ``fdatasync``,
      ``replace``, ``dir_fsync``, ``unlink``) before which the process "dies"
      (raises ``Crash``); ``crash_after`` writes let that many go first.
    """

    space: int | None = None
    crash_at: str | None = None
    crash_after: int = 0
    steps: list[str] = attrs.field(factory=list)
    _directories: set[int] = attrs.field(factory=set)

    def _step(self, name: str) -> None:
        self.steps.append(name)
        if self.crash_at == name:
            if self.crash_after <= 0:
                raise Crash(name)
            self.crash_after -= 1

    def open(self, path: str, flags: int, mode: int = 0o777) -> int:
        fd = os.open(path, flags, mode)
        if flags & os.O_DIRECTORY:
            self._directories.add(fd)
        return fd

    def write(self, fd: int, data: bytes | memoryview) -> int:
        self._step("write")
        if self.space is not None:
            if self.space <= 0:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            data = data[:self.space]
        written = os.write(fd, data)
        if self.space is not None:
            self.space -= written
        return written

    def fsync(self, fd: int) -> None:
        self._step("dir_fsync" if fd in self._directories else "fsync")
        os.fsync(fd)

    def fdatasync(self, fd: int) -> None:
        self._step("fdatasync")
        os.fdatasync(fd)

    def ftruncate(self, fd: int, length: int) -> None:
        self._step("ftruncate")
        os.ftruncate(fd, length)

    def fstat(self, fd: int) -> os.stat_result:
        return os.fstat(fd)

    def close(self, fd: int) -> None:
        self._directories.discard(fd)
        os.close(fd)

    def replace(self, source: str, target: str) -> None:
        self._step("replace")
        os.replace(source, target)

    def unlink(self, path: str) -> None:
        self._step("unlink")
        os.unlink(path)
