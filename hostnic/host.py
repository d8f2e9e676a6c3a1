"""The core's view of the host.

Reads come from the event-driven inventory (drained first, so it is the
kernel's view) with no thread hop and no netlink call; only while the
inventory resyncs or recovers do they ask the kernel, in a thread. The
default-route check is one kernel-filtered dump in a thread. Changes run
through pyroute2 in hostnic's one netlink thread.

``tests/fakes.py`` provides ``FakeHost`` with the same methods over an
in-memory model of a namespace that behaves like the kernel.
"""

from __future__ import annotations

import os
import re
from typing import Any, Callable, Protocol

import attrs
from twisted.internet.defer import Deferred

from hostnic import record, rtnl
from hostnic.linkwatch import LinkMonitor
from hostnic.model import Address, Adopted, NicRef, NicState
from hostnic.rtnl import RTM_NEWLINK, LinkInfo

Run = Callable[..., "Deferred[Any]"]


PCI_ADDRESS = re.compile(r"^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$")


def pci_address(name: str, sysfs: str = "/sys") -> str | None:
    """The PCI address of a NIC, or None for a virtual one. A virtio NIC's
    device is the virtio device (``virtio0``), whose parent is on the PCI bus:
    walk up to the nearest PCI ancestor."""
    try:
        path = os.path.realpath(f"{sysfs}/class/net/{name}/device", strict=True)
    except OSError:
        return None
    for part in reversed(path.split("/")):
        if PCI_ADDRESS.match(part):
            return part
    return None


def change(name: str, *args: Any) -> Any:
    """Run ``hostnic.netlink.<name>`` (imported on first use, in the netlink
    thread: pyroute2 is costly to load and most starts need none of it)."""
    from hostnic import netlink
    return getattr(netlink, name)(*args)


def find_nic(nic: NicRef, transit_name: str | None) -> LinkInfo | None:
    """The kernel's answer when the inventory is not current: by transit name,
    then by a dump of every link (this happens only while it recovers)."""
    if transit_name is not None:
        link = rtnl.get_link(name=transit_name)
        if link is not None:
            return link
    return next((link for link in rtnl.dump_links() if nic.matches(link.mac, link.perm)), None)


# Links that sit on a parent in the same namespace (a veth's peer points at
# it too, but is its equal, not its upper).
UPPER_KINDS = {"macvlan", "macvtap", "ipvlan", "ipvtap", "vlan", "vxlan", "gre", "gretap"}


def is_upper(link: LinkInfo, index: int) -> bool:
    return (link.link == index and link.link_netnsid is None and link.index != index
            and link.kind in UPPER_KINDS)


class HostPort(Protocol):
    """What the core needs from the host namespace."""

    def on_link_appeared(self, callback: Callable[[LinkInfo], None]) -> None: ...
    def known(self, nic: NicRef) -> list[LinkInfo]:
        """The links that are ``nic`` now, from the inventory (no I/O)."""
    async def locate(self, nic: NicRef, transit_name: str | None = None) -> LinkInfo | None:
        """The host link that is ``nic`` now, or None if it is not home."""
    async def locate_name(self, name: str) -> LinkInfo | None: ...
    async def is_host_default(self, index: int) -> bool:
        """Whether the route the host itself leaves by (the main table's best
        default, IPv4 or IPv6) goes out of this link."""
    def uppers(self, index: int) -> tuple[LinkInfo | None, list[LinkInfo]]:
        """The bridge, bond or team this link is a port of, and the links
        that sit on it (VLANs, macvlans): lending it would cut them off."""
    async def read_state(self, index: int) -> NicState:
        """The whole record of a NIC (addresses, routes, sysctls, ...)."""
    async def adopt(self, index: int) -> Adopted:
        """The configuration adopt mode gives a container from this NIC."""
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
    async def host_default_links(self) -> set[int]: ...


@attrs.define
class NetlinkHost:
    monitor: LinkMonitor
    run_in_thread: Run  # reads that must ask the kernel
    run_change: Run  # the one netlink thread
    # Where dockerd's namespace files (SandboxKeys) are seen from here, if
    # not at their own paths: a managed plugin sees the host's /run elsewhere.
    netns_dir: str | None = None

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
        candidates = self.known(nic)  # drains
        if self.monitor.ready:
            by_name = (self.monitor.inventory.by_name(transit_name)
                       if transit_name is not None else None)
            # A name hostnic gave is proof enough: the MAC may have changed.
            return by_name or (candidates[0] if candidates else None)
        found: LinkInfo | None = await self.run_in_thread(find_nic, nic, transit_name)
        return found

    async def locate_name(self, name: str) -> LinkInfo | None:
        self.monitor.drain()
        if self.monitor.ready:
            return self.monitor.inventory.by_name(name)
        found: LinkInfo | None = await self.run_in_thread(rtnl.get_link, None, name)
        return found

    async def is_host_default(self, index: int) -> bool:
        return index in await self.host_default_links()

    def uppers(self, index: int) -> tuple[LinkInfo | None, list[LinkInfo]]:
        self.monitor.drain()
        inventory = self.monitor.inventory
        link = inventory.by_index(index)
        master = inventory.by_index(link.master) if link and link.master else None
        return master, [other for other in inventory.built_on(index) if is_upper(other, index)]

    async def read_state(self, index: int) -> NicState:
        state: NicState = await self.run_in_thread(record.read, index)
        return state

    async def adopt(self, index: int) -> Adopted:
        adopted: Adopted = await self.run_in_thread(record.adopt, index)
        return adopted

    async def rename(self, index: int, name: str) -> None:
        link = self.monitor.inventory.by_index(index) if self.monitor.ready else None
        await self.run_change(change, "rename", index, name, link is None or link.up)

    async def restore(self, index: int, original: NicState) -> tuple[str, ...]:
        problems: list[str] = await self.run_change(change, "restore", index, original)
        return tuple(problems)

    async def namespace_exists(self, path: str) -> bool:
        if self.netns_dir is not None:
            path = os.path.join(self.netns_dir, os.path.basename(path))
        exists: bool = await self.run_in_thread(os.path.exists, path)
        return exists

    def all_links(self) -> list[LinkInfo]:
        self.monitor.drain()
        return self.monitor.inventory.all()

    async def addresses(self) -> dict[int, list[Address]]:
        self.monitor.drain()
        inventory = self.monitor.inventory
        return {link.index: list(inventory.addresses(link.index)) for link in inventory.all()}

    async def pci_addresses(self, names: list[str]) -> dict[str, str | None]:
        def read() -> dict[str, str | None]:
            return {name: pci_address(name) for name in names}
        found: dict[str, str | None] = await self.run_in_thread(read)
        return found

    async def host_default_links(self) -> set[int]:
        found: set[int] = await self.run_in_thread(rtnl.host_default_links)
        return found
