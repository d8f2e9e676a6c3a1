"""What the core is asked to do, in its own words.

A front end (the libnetwork driver today, a CNI plugin tomorrow) translates
its wire format into these commands and the core's answers back; the core
knows no front end's request types.
"""

from __future__ import annotations

from typing import Mapping

import attrs

from hostnic.core.ports import Sandbox
from hostnic.state.model import Address, Attachment, Route


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


# -- CNI: a runtime attaches a NIC to a namespace it hands over ---------------


@attrs.frozen
class NicChoice:
    """The NICs a CNI network may take, as its configuration names them."""

    macs: tuple[str, ...] = ()
    names: tuple[str, ...] = ()
    pcis: tuple[str, ...] = ()


@attrs.frozen
class InsideConfig:
    """What the NIC gets inside the namespace (from an IPAM plugin's result)."""

    addresses: tuple[Address, ...] = ()
    gateway4: str | None = None  # (reported with the addresses: no route of its own)
    gateway6: str | None = None
    routes: tuple[Route, ...] = ()  # a route without a gateway takes its family's


@attrs.frozen
class AttachNic:
    """Claim a NIC of ``choice`` for ``attachment``, record it, move it into
    ``sandbox`` as the attachment's interface and configure it there: from
    ``config``, or (``adopt``) from the NIC's own addresses and routes."""

    attachment: Attachment
    choice: NicChoice
    sandbox: Sandbox
    mtu: int | None = None
    adopt: bool = False
    config: InsideConfig = InsideConfig()


@attrs.frozen
class Attached:
    """The NIC as the attachment holds it inside the namespace."""

    mac: str
    ifname: str
    mtu: int
    sandbox: str
    pci: str | None
    config: InsideConfig


@attrs.frozen
class DetachNic:
    """Bring the attachment's NIC home (from ``sandbox`` if one was handed,
    else from the namespace its ADD was handed, which hostnic holds until
    now), restore it and drop the claim. Never fails for want of what is
    already gone."""

    attachment: Attachment
    sandbox: Sandbox | None = None


@attrs.frozen
class CheckAttachment:
    """Is the attachment's NIC inside ``sandbox`` as ``expected`` says?"""

    attachment: Attachment
    sandbox: Sandbox
    mtu: int | None = None
    expected: InsideConfig = InsideConfig()


@attrs.frozen
class CollectAttachments:
    """Detach every attachment of CNI network ``network`` not in ``valid``
    (container ID, interface name)."""

    network: str
    valid: frozenset[tuple[str, str]]
