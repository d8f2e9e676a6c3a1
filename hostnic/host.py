"""The core's view of the host: asynchronous NIC operations that run netlink
in threads and consult the event-driven inventory instead of dumping links.

``tests/fakes.py`` provides ``FakeHost`` with the same methods over an
in-memory model of a namespace that behaves like the kernel.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Protocol

import attrs
from twisted.internet.defer import Deferred

from hostnic import netlink
from hostnic.linkwatch import RTM_NEWLINK, LinkInfo, LinkMonitor
from hostnic.model import Address, NicRef, NicState


def pci_address(name: str) -> str | None:
    """The PCI address of a NIC from sysfs, or None for a virtual one."""
    try:
        target = os.readlink(f"/sys/class/net/{name}/device")
    except OSError:
        return None
    return os.path.basename(target) if "pci" in target or ":" in os.path.basename(target) \
        else None


class HostPort(Protocol):
    """What the core needs from the host namespace."""

    def on_link_appeared(self, callback: Callable[[LinkInfo], None]) -> None: ...
    def known(self, nic: NicRef) -> list[LinkInfo]:
        """The inventory's links for ``nic`` (a hint: no I/O, may lag)."""
    async def locate(self, nic: NicRef, transit_name: str | None = None) -> LinkInfo | None:
        """The host link that is ``nic`` now (confirmed), or None if it is not home."""
    async def locate_name(self, name: str) -> LinkInfo | None: ...
    async def carries_default_route(self, index: int) -> bool: ...
    async def read_state(self, index: int) -> NicState: ...
    async def rename(self, index: int, name: str) -> None:
        """Set the link down and rename it (the kernel refuses to rename an up
        link; a failed rename leaves it down)."""
    async def restore(self, index: int, original: NicState) -> tuple[str, ...]:
        """Put a NIC back as recorded, step by step; returns what could not be."""
    async def namespace_exists(self, path: str) -> bool: ...
    # For the admin view:
    def all_links(self) -> list[LinkInfo]: ...
    async def addresses(self) -> dict[int, list[Address]]: ...
    async def pci_addresses(self, names: list[str]) -> dict[str, str | None]: ...
    async def default_route_links(self) -> set[int]: ...


@attrs.define
class NetlinkHost:
    monitor: LinkMonitor
    run_in_thread: Callable[..., "Deferred[Any]"]

    def on_link_appeared(self, callback: Callable[[LinkInfo], None]) -> None:
        def listener(msg_type: int, link: LinkInfo) -> None:
            if msg_type == RTM_NEWLINK:
                callback(link)
        self.monitor.listeners.append(listener)

    def known(self, nic: NicRef) -> list[LinkInfo]:
        self.monitor.drain()
        inventory = self.monitor.inventory
        found = {link.index: link for link in inventory.by_mac(nic.mac)}
        if nic.perm is not None:
            found.update((link.index, link) for link in inventory.by_perm(nic.perm))
        return [found[i] for i in sorted(found)]

    async def locate(self, nic: NicRef, transit_name: str | None = None) -> LinkInfo | None:
        hints = [link.index for link in self.known(nic)]
        ready = self.monitor.ready
        if ready and transit_name is not None \
                and self.monitor.inventory.by_name(transit_name) is None:
            transit_name = None  # the inventory is current: no link wears it
        if ready and not hints and transit_name is None:
            return None  # current from events: absent there means absent
        found: LinkInfo | None = await self.run_in_thread(
            netlink.find_nic, nic, hints, transit_name, not ready)
        return found

    async def locate_name(self, name: str) -> LinkInfo | None:
        found: LinkInfo | None = await self.run_in_thread(netlink.get_link, None, name)
        return found

    async def carries_default_route(self, index: int) -> bool:
        carries: bool = await self.run_in_thread(netlink.carries_default_route, index)
        return carries

    async def read_state(self, index: int) -> NicState:
        state: NicState = await self.run_in_thread(netlink.read_state, index)
        return state

    async def rename(self, index: int, name: str) -> None:
        await self.run_in_thread(netlink.rename, index, name)

    async def restore(self, index: int, original: NicState) -> tuple[str, ...]:
        problems: list[str] = await self.run_in_thread(netlink.restore, index, original)
        return tuple(problems)

    async def namespace_exists(self, path: str) -> bool:
        exists: bool = await self.run_in_thread(os.path.exists, path)
        return exists

    def all_links(self) -> list[LinkInfo]:
        self.monitor.drain()
        return self.monitor.inventory.all()

    async def addresses(self) -> dict[int, list[Address]]:
        found: dict[int, list[Address]] = await self.run_in_thread(netlink.all_addresses)
        return found

    async def pci_addresses(self, names: list[str]) -> dict[str, str | None]:
        def read() -> dict[str, str | None]:
            return {name: pci_address(name) for name in names}
        found: dict[str, str | None] = await self.run_in_thread(read)
        return found

    async def default_route_links(self) -> set[int]:
        found: set[int] = await self.run_in_thread(netlink.default_route_ifindexes)
        return found
