"""What the core needs from the world outside it, as protocols: the host
namespace (implemented by ``hostnic.kernel``'s netlink host, and by the fake
of the unit tests; ``tests/host_contract.py`` holds both to it)."""

from __future__ import annotations

from typing import Callable, Protocol

from hostnic.state.model import Address, Adopted, LinkInfo, NicRef, NicState


class HostPort(Protocol):
    """What the core needs from the host namespace. Every method raises
    HostError (a sentence) when the kernel fails, never a bare OSError."""

    async def start(self) -> None:
        """Begin watching the host (the inventory is current once this returns)."""
    def stop(self) -> None: ...
    def on_link_appeared(self, callback: Callable[[LinkInfo], None]) -> None: ...
    def known(self, nic: NicRef) -> list[LinkInfo]:
        """The links with ``nic``'s MAC or permanent address now, from the
        inventory (no I/O; while the inventory resyncs, its last view)."""
    async def locate(self, nic: NicRef, transit_name: str | None = None,
                     lent_index: int | None = None) -> LinkInfo | None:
        """The host link that is ``nic`` now, or None if it is not home. A link
        found by ``transit_name`` must prove to be the NIC (``NicRef.is_link``:
        its permanent address, its MAC, or ``lent_index``, its index when lent):
        a name alone never is proof."""
    async def locate_name(self, name: str) -> LinkInfo | None: ...
    async def is_host_default(self, index: int) -> bool:
        """Whether the route the host itself leaves by (the main table's best
        default, IPv4 or IPv6) goes out of this link."""
    async def uppers(self, index: int) -> tuple[LinkInfo | None, list[LinkInfo]]:
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
