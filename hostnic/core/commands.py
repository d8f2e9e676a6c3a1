"""What the core is asked to do, in its own words.

A front end (the libnetwork driver today, a CNI plugin tomorrow) translates
its wire format into these commands and the core's answers back; the core
knows no front end's request types.
"""

from __future__ import annotations

from typing import Mapping

import attrs

from hostnic.state.model import Route


@attrs.frozen
class DefineNetwork:
    """A network: the pool of NICs its endpoints take, and what they get."""

    network_id: str
    macs: tuple[str, ...]  # the NICs, by MAC ...
    names: tuple[str, ...]  # ... by interface name ...
    pcis: tuple[str, ...] = ()  # ... and by PCI address
    gateway4: str | None = None
    gateway6: str | None = None
    subnets: tuple[str, ...] = ()
    options: Mapping[str, str] = attrs.field(factory=dict)  # as given, to tell a retry
    adopt: bool = False  # each NIC's own configuration, not the front end's addresses
    ipv6: bool = False


@attrs.frozen
class EndpointKey:
    network_id: str
    endpoint_id: str


@attrs.frozen
class ClaimNic:
    """Hold a NIC of the network's pool for an endpoint (the pinned one, if
    given); it is not touched yet."""

    endpoint: EndpointKey
    pinned_mac: str | None = None
    pinned_pci: str | None = None


@attrs.frozen
class Claimed:
    """The NIC an endpoint holds; in adopt mode, its own addresses."""

    mac: str
    address4: str | None = None  # CIDR
    address6: str | None = None


@attrs.frozen
class LendNic:
    """Record the claimed NIC, then hand it over under its transit name to the
    namespace at ``sandbox_key`` (the front end moves it there)."""

    endpoint: EndpointKey
    sandbox_key: str | None = None


@attrs.frozen
class Lent:
    """The NIC ready to move: its name on the host now, and what the
    namespace it goes into routes through it."""

    src_name: str
    gateway4: str | None
    gateway6: str | None
    routes: tuple[Route, ...] = ()  # adopt mode: the NIC's other routes
