"""The core's view of the host: asynchronous NIC operations that run netlink
in threads and consult the event-driven inventory instead of dumping links.

``tests/fakes.py`` provides ``FakeHost`` with the same methods over an
in-memory model of a namespace.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Protocol

import attrs
from twisted.internet.defer import Deferred

from hostnic import netlink
from hostnic.linkwatch import RTM_NEWLINK, LinkInfo, LinkMonitor
from hostnic.model import Address, NicState


def pci_address(name: str) -> str | None:
    """The PCI address of a NIC from sysfs, or None for a virtual one."""
    try:
        target = os.readlink(f"/sys/class/net/{name}/device")
    except OSError:
        return None
    return os.path.basename(target) if "pci" in target or ":" in os.path.basename(target) \
        else None


@attrs.frozen
class RestoreOutcome:
    found: bool
    name: str | None = None
    problems: tuple[str, ...] = ()


class HostPort(Protocol):
    """What the core needs from the host namespace."""

    def on_link_appeared(self, callback: Callable[[LinkInfo], None]) -> None: ...
    def known_links(self, mac: str) -> list[LinkInfo]: ...
    async def locate(self, mac: str, name: str | None = None) -> LinkInfo | None: ...
    async def locate_name(self, name: str) -> LinkInfo | None: ...
    async def default_route_links(self) -> set[int]: ...
    async def read_state(self, index: int) -> NicState: ...
    async def rename(self, index: int, name: str) -> None: ...
    async def restore(self, mac: str, original: NicState,
                      transit_name: str) -> RestoreOutcome: ...
    # For the admin view:
    def all_links(self) -> list[LinkInfo]: ...
    async def addresses(self) -> dict[int, list[Address]]: ...
    async def pci_addresses(self, names: list[str]) -> dict[str, str | None]: ...
    async def namespace_exists(self, path: str) -> bool: ...


@attrs.define
class NetlinkHost:
    monitor: LinkMonitor
    run_in_thread: Callable[..., "Deferred[Any]"]

    def on_link_appeared(self, callback: Callable[[LinkInfo], None]) -> None:
        def listener(msg_type: int, link: LinkInfo) -> None:
            if msg_type == RTM_NEWLINK:
                callback(link)
        self.monitor.listeners.append(listener)

    def known_links(self, mac: str) -> list[LinkInfo]:
        self.monitor.drain()
        return self.monitor.inventory.by_mac(mac)

    async def locate(self, mac: str, name: str | None = None) -> LinkInfo | None:
        hints = [link.index for link in self.known_links(mac)]
        if not hints and name is None:
            # The inventory is current from events: absent there means absent,
            # unless a resync is running (then confirm the slow way).
            if self.monitor.ready:
                return None
        found: LinkInfo | None = await self.run_in_thread(
            netlink.find_by_mac, mac, hints, name)
        return found

    async def locate_name(self, name: str) -> LinkInfo | None:
        found: LinkInfo | None = await self.run_in_thread(netlink.get_link, None, name)
        return found

    async def default_route_links(self) -> set[int]:
        found: set[int] = await self.run_in_thread(netlink.default_route_ifindexes)
        return found

    async def read_state(self, index: int) -> NicState:
        state: NicState = await self.run_in_thread(netlink.read_state, index)
        return state

    async def rename(self, index: int, name: str) -> None:
        await self.run_in_thread(netlink.rename, index, name)

    async def restore(self, mac: str, original: NicState,
                      transit_name: str) -> RestoreOutcome:
        link = await self.locate(mac, name=transit_name)
        if link is None:
            return RestoreOutcome(found=False)
        problems: list[str] = await self.run_in_thread(netlink.restore, link.index, original)
        return RestoreOutcome(found=True, name=link.name, problems=tuple(problems))

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

    async def namespace_exists(self, path: str) -> bool:
        exists: bool = await self.run_in_thread(os.path.exists, path)
        return exists
