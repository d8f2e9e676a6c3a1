"""Value types of hostnic's state.

Everything here is immutable: the ledger replaces the whole ``State`` on each
change, so a change that cannot be saved is undone by putting the old value
back. The JSON form of these types lives in ``statefile``.
"""

from __future__ import annotations

import enum
import re
from typing import Mapping

import attrs
import netaddr

from hostnic.errors import InvalidOption
from hostnic.text import quoted


def normalize_mac(text: str) -> str:
    """Canonical ``aa:bb:cc:dd:ee:ff`` for any common notation of a 48-bit MAC."""
    candidate = text.strip()
    # netaddr also reads bare integers and EUI-64; a NIC's MAC is neither.
    if not candidate or candidate.isdigit() or len(candidate) > 32:
        raise InvalidOption(f"{quoted(text)} is not a MAC address")
    try:
        eui = netaddr.EUI(candidate, dialect=netaddr.mac_unix_expanded)
    except (netaddr.AddrFormatError, TypeError, ValueError):
        raise InvalidOption(f"{quoted(text)} is not a MAC address") from None
    if eui.version != 48:
        raise InvalidOption(f"{quoted(text)} is not a 48-bit MAC address")
    return str(eui)


# Linux accepts at most 15 bytes, no '/', no whitespace, not '.' or '..'.
_IFNAME = re.compile(r"^[^/\s:]{1,15}$")
TRANSIT_PREFIX = "hn"


def valid_ifname(name: str) -> bool:
    return bool(_IFNAME.match(name)) and name not in (".", "..")


def transit_name(endpoint_id: str) -> str:
    """The host name a NIC wears while lent to ``endpoint_id``: unique, so it can
    never collide with a name already inside the container (EEXIST on move)."""
    return TRANSIT_PREFIX + endpoint_id[:13]


@attrs.frozen
class NicRef:
    """How hostnic recognises one NIC wherever it has been: the MAC it had when
    it joined a pool, and its permanent hardware address where the kernel
    reports one (that one survives a MAC changed by a container or an admin).
    While lent, the NIC is also known by its endpoint's transit name."""

    mac: str
    perm: str | None = None

    def same_nic(self, other: NicRef) -> bool:
        return self.mac == other.mac or (self.perm is not None and self.perm == other.perm)

    def matches(self, mac: str | None, perm: str | None) -> bool:
        return (mac is not None and mac == self.mac) or (
            self.perm is not None and perm == self.perm)

    @property
    def key(self) -> str:
        """The key of this NIC's lock: every reference to one NIC is a copy of
        its pool entry, so the pooled MAC names it consistently."""
        return self.mac

    def __str__(self) -> str:
        return self.mac


@attrs.frozen
class Address:
    """One address of a NIC, as recorded before it left the host."""

    family: int  # socket.AF_INET or socket.AF_INET6
    address: str
    prefixlen: int

    def __str__(self) -> str:
        return f"{self.address}/{self.prefixlen}"


@attrs.frozen
class NicState:
    """What a NIC looked like in the host namespace before hostnic lent it."""

    name: str
    mac: str
    mtu: int
    up: bool
    addresses: tuple[Address, ...] = ()

    def shown_by(self, name: str, mac: str | None, mtu: int, up: bool) -> bool:
        """Whether a link looks restored to this state (what a link event shows;
        addresses come back in the same restore as these)."""
        return (name, mac, mtu, up) == (self.name, self.mac, self.mtu, self.up)


@attrs.frozen
class Network:
    id: str
    pool: tuple[NicRef, ...]  # in the order the user gave them
    gateway4: str | None = None
    gateway6: str | None = None
    subnets: tuple[str, ...] = ()
    options: Mapping[str, str] = attrs.field(factory=dict)

    def entry(self, nic: NicRef) -> NicRef | None:
        """This network's pool entry for ``nic``, if it holds that NIC."""
        return next((ref for ref in self.pool if ref.same_nic(nic)), None)

    @property
    def macs(self) -> list[str]:
        return [ref.mac for ref in self.pool]


class Phase(str, enum.Enum):
    CREATED = "created"  # CreateEndpoint claimed the NIC; it is untouched
    JOINED = "joined"  # original state recorded; the NIC may be lent (write-ahead)
    LEFT = "left"  # dockerd said Leave; the NIC is on its way home
    RELEASING = "releasing"  # dockerd deleted the endpoint; restore it once home


@attrs.frozen
class Claim:
    """One endpoint's hold on one NIC of its network's pool."""

    endpoint_id: str
    network_id: str
    nic: NicRef
    phase: Phase = Phase.CREATED
    original: NicState | None = None
    sandbox_key: str | None = None
    created_at: float = 0.0
    joined_at: float | None = None

    @property
    def mac(self) -> str:
        return self.nic.mac

    @property
    def transit_name(self) -> str:
        return transit_name(self.endpoint_id)


@attrs.frozen
class State:
    networks: Mapping[str, Network] = attrs.field(factory=dict)
    claims: Mapping[str, Claim] = attrs.field(factory=dict)

    def network_of(self, nic: NicRef) -> Network | None:
        for network in self.networks.values():
            if network.entry(nic) is not None:
                return network
        return None

    def pool_entry(self, nic: NicRef) -> NicRef | None:
        network = self.network_of(nic)
        return network.entry(nic) if network is not None else None

    def claim_of(self, nic: NicRef) -> Claim | None:
        for claim in self.claims.values():
            if claim.nic.same_nic(nic):
                return claim
        return None

    def claim_of_link(self, mac: str | None, perm: str | None, name: str) -> Claim | None:
        """The claim a host link belongs to: by its transit name, its MAC or its
        permanent address."""
        for claim in self.claims.values():
            if name == claim.transit_name or claim.nic.matches(mac, perm):
                return claim
        return None

    def with_network(self, network: Network) -> State:
        return attrs.evolve(self, networks={**self.networks, network.id: network})

    def without_network(self, network_id: str) -> State:
        networks = {k: v for k, v in self.networks.items() if k != network_id}
        return attrs.evolve(self, networks=networks)

    def with_claim(self, claim: Claim) -> State:
        return attrs.evolve(self, claims={**self.claims, claim.endpoint_id: claim})

    def without_claim(self, endpoint_id: str) -> State:
        claims = {k: v for k, v in self.claims.items() if k != endpoint_id}
        return attrs.evolve(self, claims=claims)
