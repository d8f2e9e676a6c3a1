"""Faithful in-memory stand-ins for the host namespace, for unit tests.

``FakeNamespace`` models what the core relies on from the kernel: unique
names per namespace, renames refused onto a taken name, a namespace move that
flushes addresses and leaves the link down (as dockerd returns it), and the
kernel's return of a physical NIC under its in-container name.
"""

from __future__ import annotations

import socket
from typing import Any, Callable

import attrs
from twisted.internet.defer import Deferred, maybeDeferred

from hostnic.errors import HostError
from hostnic.host import RestoreOutcome
from hostnic.linkwatch import IFF_LOOPBACK, IFF_UP, LinkInfo
from hostnic.model import Address, NicState


def run_now(f: Callable[..., Any], *args: Any, **kwargs: Any) -> "Deferred[Any]":
    """A synchronous stand-in for deferToThread."""
    return maybeDeferred(f, *args, **kwargs)


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

    def info(self) -> LinkInfo:
        flags = (IFF_UP if self.up else 0) | (IFF_LOOPBACK if self.loopback else 0)
        return LinkInfo(self.index, self.name, self.mac, self.mtu, flags, self.kind)


@attrs.define
class FakeHost:
    """Implements hostnic.host.HostPort over in-memory links."""

    links: dict[int, FakeLink] = attrs.field(factory=dict)
    default_route_indexes: set[int] = attrs.field(factory=set)
    gate: "Deferred[None] | None" = None  # when set, host calls wait on it
    live_namespaces: set[str] = attrs.field(factory=set)
    pci: dict[str, str] = attrs.field(factory=dict)
    calls: list[tuple[str, Any]] = attrs.field(factory=list)
    _callbacks: list[Callable[[LinkInfo], None]] = attrs.field(factory=list)
    _next_index: int = 2

    # -- test-side controls ----------------------------------------------

    def add(self, name: str, mac: str, **kwargs: Any) -> FakeLink:
        link = FakeLink(self._next_index, name, mac, **kwargs)
        self._next_index += 1
        self.links[link.index] = link
        return link

    def by_mac(self, mac: str) -> FakeLink:
        return next(link for link in self.links.values() if link.mac == mac)

    def _host_name_taken(self, name: str, but: int) -> bool:
        return any(l.name == name and l.where == "host" and l.index != but
                   for l in self.links.values())

    def dockerd_moves_in(self, name: str, sandbox: str, address: str) -> FakeLink:
        """What dockerd does after Join: move by name, rename ethN, configure."""
        link = next(l for l in self.links.values() if l.name == name and l.where == "host")
        taken = {l.name for l in self.links.values() if l.where == sandbox}
        if name in taken:
            raise OSError(17, "File exists")
        link.where, link.up, link.addresses = sandbox, True, [Address(2, address, 24)]
        self.live_namespaces.add(sandbox)
        link.name = next(f"eth{i}" for i in range(100) if f"eth{i}" not in taken)
        return link

    def dockerd_moves_back(self, mac: str, src_name: str) -> None:
        """What dockerd does after Leave: down, rename to SrcName, move home."""
        link = self.by_mac(mac)
        link.up, link.name, link.where, link.addresses = False, src_name, "host", []
        self._appeared(link)

    def kernel_returns(self, mac: str) -> None:
        """A dying namespace hands a physical NIC back under its inner name."""
        link = self.by_mac(mac)
        name = link.name if not self._host_name_taken(link.name, link.index) \
            else f"dev{link.index}"
        link.up, link.name, link.where, link.addresses = False, name, "host", []
        self._appeared(link)

    def _appeared(self, link: FakeLink) -> None:
        for callback in self._callbacks:
            callback(link.info())

    async def _wait(self, call: str, arg: Any) -> None:
        self.calls.append((call, arg))
        if self.gate is not None:
            await self.gate

    # -- HostPort ---------------------------------------------------------

    def on_link_appeared(self, callback: Callable[[LinkInfo], None]) -> None:
        self._callbacks.append(callback)

    def known_links(self, mac: str) -> list[LinkInfo]:
        return [l.info() for l in self.links.values() if l.mac == mac and l.where == "host"]

    async def locate(self, mac: str, name: str | None = None) -> LinkInfo | None:
        await self._wait("locate", mac)
        found = self.known_links(mac)
        return found[0] if found else None

    async def locate_name(self, name: str) -> LinkInfo | None:
        await self._wait("locate_name", name)
        return next((l.info() for l in self.links.values()
                     if l.name == name and l.where == "host"), None)

    async def default_route_links(self) -> set[int]:
        await self._wait("default_route_links", None)
        return set(self.default_route_indexes)

    async def read_state(self, index: int) -> NicState:
        await self._wait("read_state", index)
        link = self.links[index]
        return NicState(link.name, link.mac, link.mtu, link.up, tuple(link.addresses))

    async def rename(self, index: int, name: str) -> None:
        await self._wait("rename", (index, name))
        link = self.links[index]
        if self._host_name_taken(name, index):
            raise HostError(f"could not rename interface {index} to {name}: File exists")
        link.up, link.name = False, name

    def all_links(self) -> list[LinkInfo]:
        return [l.info() for l in sorted(self.links.values(), key=lambda l: l.index)
                if l.where == "host"]

    async def addresses(self) -> dict[int, list[Address]]:
        await self._wait("addresses", None)
        return {l.index: list(l.addresses) for l in self.links.values() if l.where == "host"}

    async def pci_addresses(self, names: list[str]) -> dict[str, str | None]:
        return {name: self.pci.get(name) for name in names}

    async def namespace_exists(self, path: str) -> bool:
        return path in self.live_namespaces

    async def restore(self, mac: str, original: NicState, transit_name: str) -> RestoreOutcome:
        await self._wait("restore", mac)
        found = [l for l in self.links.values() if l.mac == mac and l.where == "host"]
        if not found:
            return RestoreOutcome(found=False)
        link, problems = found[0], []
        was = link.name
        if self._host_name_taken(original.name, link.index):
            problems.append(f"name {original.name}: File exists")
        else:
            link.name = original.name
        link.mtu, link.mac, link.up = original.mtu, original.mac, original.up
        for address in original.addresses:
            if address not in link.addresses:
                link.addresses.append(address)
        return RestoreOutcome(found=True, name=was, problems=tuple(problems))


V4 = socket.AF_INET
