"""The core's view of the host.

Reads come from the event-driven inventory (drained first, so it is the
kernel's view) with no thread hop and no netlink call; only while the
inventory resyncs or recovers do they ask the kernel, in a thread. The
default-route check is one kernel-filtered dump in a thread. Changes are
pyroute2 messages sent in batches from hostnic's one netlink thread.

``tests/fakes.py`` provides ``FakeHost`` with the same methods over an
in-memory model of a namespace that behaves like the kernel;
``tests/host_contract.py`` is what both must do alike, run over each.
"""

from __future__ import annotations

import glob
import os
from typing import Any, Callable

import attrs
from twisted.internet.defer import Deferred
from twisted.python.threadpool import ThreadPool

from hostnic.errors import HostError, HostnicError
from hostnic.core.ports import HostSurvey, Sandbox
from hostnic.kernel import record, rtnl
from hostnic.kernel.monitor import LinkMonitor
from hostnic.kernel.rtnl import RTM_NEWLINK
from hostnic.state.model import (Address, Adopted, Inside, LinkFacts, LinkInfo, NicRef,
                                 NicState, Route, is_full_pci, proven)

Run = Callable[..., "Deferred[Any]"]


def pci_address(name: str, sysfs: str = "/sys") -> str | None:
    """The PCI address of a NIC, or None for a virtual one. A virtio NIC's
    device is the virtio device (``virtio0``), whose parent is on the PCI bus:
    walk up to the nearest PCI ancestor."""
    try:
        path = os.path.realpath(f"{sysfs}/class/net/{name}/device", strict=True)
    except OSError:
        return None
    for part in reversed(path.split("/")):
        if is_full_pci(part):
            return part
    return None


def names_at_pci(pci: str, sysfs: str = "/sys") -> list[str]:
    """The network interfaces of the PCI device ``pci``: its own (a NIC, a
    VF) or its virtio device's (a virtio NIC, whose parent the kernel reports
    as the virtio device)."""
    device = f"{sysfs}/bus/pci/devices/{pci}"
    return sorted(os.path.basename(path) for path in
                  glob.glob(f"{device}/net/*") + glob.glob(f"{device}/virtio*/net/*"))


def links_at_pci(pci: str) -> list[LinkInfo]:
    return [link for link in (rtnl.get_link(name=name) for name in names_at_pci(pci)) if link]


def translated(what: str, f: Callable[..., Any], *args: Any) -> Any:
    """Run ``f`` (in a thread); an error of the kernel's (an ``OSError`` from a
    raw netlink socket or /proc, an error of pyroute2's message classes) that
    reaches the host port leaves it as a HostError that names what failed, so
    the core meets only its own error types."""
    try:
        return f(*args)
    except HostnicError:
        raise
    except OSError as e:
        raise HostError(f"{what}: {e.strerror or e}") from None
    except Exception as e:
        if type(e).__module__.startswith("pyroute2."):
            raise HostError(f"{what}: {e}") from None
        raise


def rename_link(index: int, name: str, up: bool) -> None:
    # hostnic.kernel.changes loads pyroute2's message classes: on the first
    # change, in the netlink thread, not at start-up.
    from hostnic.kernel import changes
    changes.rename(index, name, up)


def restore_link(index: int, original: NicState) -> list[str]:
    from hostnic.kernel import changes
    return changes.restore(index, original)


def _in_sandbox(step: str, *args: Any) -> Any:
    # As rename_link: the changes load pyroute2's message classes, on first use.
    from hostnic.kernel import sandbox
    return getattr(sandbox, step)(*args)


def find_links(nic: NicRef, transit_name: str | None) -> list[LinkInfo]:
    """The kernel's answer when the inventory is not current: the link wearing
    the transit name, then every link with the NIC's MAC, permanent address
    or PCI address, from a dump (this happens only while the inventory
    recovers)."""
    found = {}
    if transit_name is not None:
        link = rtnl.get_link(name=transit_name)
        if link is not None:
            found[link.index] = link
    for link in rtnl.dump_links():
        if nic.matches(link.mac, link.perm, link.pci):
            found.setdefault(link.index, link)
    return list(found.values())


def uppers_of(links: list[LinkInfo], index: int) -> tuple[LinkInfo | None, list[LinkInfo]]:
    by_index = {link.index: link for link in links}
    link = by_index.get(index)
    master = by_index.get(link.master) if link is not None and link.master else None
    return master, [other for other in links if is_upper(other, index)]


# Links that sit on a parent in the same namespace (a veth's peer points at
# it too, but is its equal, not its upper).
UPPER_KINDS = {"macvlan", "macvtap", "ipvlan", "ipvtap", "vlan", "vxlan", "gre", "gretap"}


def is_upper(link: LinkInfo, index: int) -> bool:
    return (link.link == index and link.link_netnsid is None and link.index != index
            and link.kind in UPPER_KINDS)


@attrs.define
class NetlinkHost:
    monitor: LinkMonitor
    run_in_thread: Run  # reads that must ask the kernel
    run_change: Run  # the one netlink thread
    # Where dockerd's namespace files (SandboxKeys) are seen from here, if
    # not at their own paths: a managed plugin sees the host's /run elsewhere.
    netns_dir: str | None = None
    threads: ThreadPool | None = None  # run_change's pool: started and stopped with the host

    async def start(self) -> None:
        if self.threads is not None:
            self.threads.start()
        try:
            await self.monitor.start()
        except OSError as e:
            raise HostError(f"cannot watch the host's links: {e.strerror or e}") from None

    def stop(self) -> None:
        self.monitor.stop()
        if self.threads is not None:
            self.threads.stop()

    async def _ask(self, what: str, f: Callable[..., Any], *args: Any) -> Any:
        return await self.run_in_thread(translated, what, f, *args)

    async def _change(self, what: str, f: Callable[..., Any], *args: Any) -> Any:
        return await self.run_change(translated, what, f, *args)

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
        if nic.pci is not None:
            found.update((link.index, link) for link in inventory.by_pci(nic.pci))
        return [found[i] for i in sorted(found)]

    async def locate(self, nic: NicRef, transit_name: str | None = None,
                     lent_index: int | None = None) -> LinkInfo | None:
        candidates = self.known(nic)  # drains
        if self.monitor.ready:
            named = (self.monitor.inventory.by_name(transit_name)
                     if transit_name is not None else None)
            links = ([named] if named is not None else []) + candidates
        else:
            links = await self._ask(f"looking for NIC {nic.mac} in the kernel", find_links,
                                    nic, transit_name)
        return proven(nic, links, lent_index)

    async def locate_pci(self, pci: str) -> list[LinkInfo]:
        self.monitor.drain()
        if self.monitor.ready:
            links = self.monitor.inventory.by_pci(pci)
            if links:
                return links
        # A virtio NIC's parent is its virtio device: its PCI address is in sysfs.
        found: list[LinkInfo] = await self._ask(f"looking for the NIC at PCI address {pci}",
                                                links_at_pci, pci)
        return found

    async def locate_name(self, name: str) -> LinkInfo | None:
        self.monitor.drain()
        if self.monitor.ready:
            return self.monitor.inventory.by_name(name)
        found: LinkInfo | None = await self._ask(f"looking for interface {name} in the kernel",
                                                 rtnl.get_link, None, name)
        return found

    async def inspect(self, link: LinkInfo, with_record: bool = False) -> LinkFacts:
        self.monitor.drain()
        ready = self.monitor.ready
        inventory = self.monitor.inventory
        current = inventory.by_index(link.index) if ready else None
        if ready and current is None:
            raise HostError(f"interface {link.index} vanished from the host")
        # One thread hop, one netlink socket: the default routes and the
        # record (and, while the inventory is not current, the link and its
        # neighbours) from the kernel.
        current, defaults, links, state = await self._ask(
            f"inspecting interface {link.index}", record.inspect, link.index, current,
            with_record, not ready)
        if links is None:  # the inventory's: the link, its master, what is built on it
            master_link = inventory.by_index(current.master) if current.master else None
            links = [current, *([master_link] if master_link else []),
                     *inventory.built_on(current.index)]
        master, uppers = uppers_of(links, current.index)
        return LinkFacts(current, master, tuple(uppers), current.index in defaults, state)

    async def adopt(self, index: int) -> Adopted:
        adopted: Adopted = await self._ask(f"reading the configuration of interface {index}",
                                           record.adopt, index)
        return adopted

    async def rename(self, index: int, name: str) -> None:
        link = self.monitor.inventory.by_index(index) if self.monitor.ready else None
        await self._change(f"renaming interface {index} to {name}", rename_link, index, name,
                           link is None or link.up)

    async def restore(self, index: int, original: NicState) -> tuple[str, ...]:
        problems: list[str] = await self._change(
            f"restoring interface {index} as {original.name}", restore_link, index, original)
        return tuple(problems)

    async def namespace_exists(self, path: str) -> bool:
        if self.netns_dir is not None:
            path = os.path.join(self.netns_dir, os.path.basename(path))
        exists: bool = await self.run_in_thread(os.path.exists, path)
        return exists

    async def move_into(self, index: int, sandbox: Sandbox, name: str) -> LinkInfo:
        moved: LinkInfo = await self._change(f"moving interface {index} into {sandbox.key}",
                                             _in_sandbox, "move_in", index, sandbox, name)
        return moved

    async def configure_in(self, sandbox: Sandbox, index: int, mtu: int | None,
                           addresses: tuple[Address, ...], routes: tuple[Route, ...]) -> None:
        await self._change(f"configuring interface {index} in {sandbox.key}", _in_sandbox,
                           "configure", sandbox, index, mtu, addresses, routes)

    async def look_in(self, sandbox: Sandbox, name: str) -> Inside | None:
        inside: Inside | None = await self._change(
            f"looking at {name} in {sandbox.key}", _in_sandbox, "look", sandbox, name)
        return inside

    async def bring_home(self, sandbox: Sandbox, nic: NicRef, name: str, home_name: str,
                         lent_index: int | None) -> LinkInfo | None:
        back: LinkInfo | None = await self._change(
            f"bringing NIC {nic.mac} home from {sandbox.key}", _in_sandbox, "bring_home",
            sandbox, nic, name, home_name, lent_index)
        return back

    def all_links(self) -> list[LinkInfo]:
        self.monitor.drain()
        return self.monitor.inventory.all()

    async def survey(self) -> HostSurvey:
        links = self.all_links()  # drains
        inventory = self.monitor.inventory
        addresses = {link.index: list(inventory.addresses(link.index)) for link in links}
        names = [link.name for link in links if link.mac]

        def read() -> tuple[dict[str, str | None], set[int]]:
            return {name: pci_address(name) for name in names}, rtnl.host_default_links()
        pci, management = await self._ask("surveying the host's links", read)
        return HostSurvey(links, addresses, pci, management)
