"""What the core needs from the world outside it, as protocols: the host
namespace (implemented by ``hostnic.kernel``'s netlink host, and by the fake
of the unit tests; ``tests/host_contract.py`` holds both to it)."""

from __future__ import annotations

from typing import Callable, Mapping, Protocol

import attrs

from hostnic.state.model import (Address, Adopted, Inside, LinkFacts, LinkInfo, NicRef,
                                 NicState, Route)


@attrs.frozen
class HostSurvey:
    links: list[LinkInfo]
    addresses: Mapping[int, list[Address]]  # by interface index
    pci: Mapping[str, str | None]  # by name: the PCI address of a NIC that has one
    management: set[int]  # the links the host's own default routes leave by


class Sandbox(Protocol):
    """A network namespace handed to hostnic by the process that may enter it
    (a container's, for CNI)."""

    @property
    def key(self) -> str:
        """The path it was named by (what a claim records)."""

    def close(self) -> None:
        """Let go of the namespace (its descriptors)."""


class HostPort(Protocol):
    """What the core needs from the host namespace. Every method raises
    HostError (a sentence) when the kernel fails, never a bare OSError."""

    async def start(self) -> None:
        """Begin watching the host (the inventory is current once this returns)."""
    def stop(self) -> None: ...
    def on_link_appeared(self, callback: Callable[[LinkInfo], None]) -> None: ...
    def known(self, nic: NicRef) -> list[LinkInfo]:
        """The links with ``nic``'s MAC, permanent address or PCI address now,
        from the inventory (no I/O; while the inventory resyncs, its last view)."""
    async def locate(self, nic: NicRef, transit_name: str | None = None,
                     lent_index: int | None = None) -> LinkInfo | None:
        """The host link that is ``nic`` now, or None if it is not home. A link
        found by ``transit_name`` must prove to be the NIC (``NicRef.is_link``:
        its permanent address, its MAC, or ``lent_index``, its index when lent):
        a name alone never is proof."""
    async def locate_name(self, name: str) -> LinkInfo | None: ...
    async def locate_pci(self, pci: str) -> list[LinkInfo]:
        """The host links on the PCI device ``pci`` (a NIC, an SR-IOV VF, a
        virtio NIC; a function with several ports has several)."""
    async def inspect(self, link: LinkInfo, with_record: bool = False) -> LinkFacts:
        """At once, what the guards need of ``link`` (the bridge or bond it is
        a port of, the devices built on it, whether the host's own default
        route leaves by it) and, ``with_record``, its whole record (addresses,
        routes, sysctls, ...). HostError if it vanished."""
    async def adopt(self, index: int) -> Adopted:
        """The configuration adopt mode gives a container from this NIC."""
    async def rename(self, index: int, name: str) -> None:
        """Set the link down and rename it (the kernel refuses to rename an up
        link; a failed rename leaves it down)."""
    async def restore(self, index: int, original: NicState) -> tuple[str, ...]:
        """Put a NIC back as recorded, step by step; returns what could not be."""
    async def namespace_exists(self, path: str) -> bool: ...
    # A namespace handed over (CNI): hostnic moves the NIC itself.
    async def move_into(self, index: int, sandbox: Sandbox, name: str) -> LinkInfo:
        """Move host link ``index`` into ``sandbox`` and name it ``name`` there
        (the move sets it down and resets its per-device settings to the
        namespace's defaults); the link as it is there. A name taken there is
        refused before the link moves; a rename that fails after the move
        takes it home again."""
    async def configure_in(self, sandbox: Sandbox, index: int, mtu: int | None,
                           addresses: tuple[Address, ...], routes: tuple[Route, ...]) -> None:
        """Give link ``index`` of ``sandbox`` its MTU, addresses, admin state
        up and routes; HostError naming the first step that failed."""
    async def look_in(self, sandbox: Sandbox, name: str) -> Inside | None:
        """Link ``name`` of ``sandbox`` with its addresses and routes, or None."""
    async def bring_home(self, sandbox: Sandbox, nic: NicRef, name: str, home_name: str,
                         lent_index: int | None) -> LinkInfo | None:
        """Move ``nic`` out of ``sandbox`` home as ``home_name`` (found under
        ``name`` or, renamed there, by identity; only a link that proves to be
        the NIC); the link as it is home, or None if the NIC is not there."""
    # For the admin view:
    def all_links(self) -> list[LinkInfo]: ...
    async def survey(self) -> HostSurvey:
        """Every link with its addresses and PCI address, and the links the
        host's default routes leave by."""
