"""Value types of hostnic's state, and their JSON form for the store.

Everything here is immutable: the core replaces its whole ``State`` on each
change, so a failed save rolls back by keeping the old value.
"""

from __future__ import annotations

import enum
import re
from typing import Any, Mapping

import attrs
import netaddr

from hostnic.errors import InvalidOption


def normalize_mac(text: str) -> str:
    """Canonical ``aa:bb:cc:dd:ee:ff`` for any common notation of a 48-bit MAC."""
    candidate = text.strip()
    # netaddr also reads bare integers and EUI-64; a NIC's MAC is neither.
    if not candidate or candidate.isdigit():
        raise InvalidOption(f"{text!r} is not a MAC address")
    try:
        eui = netaddr.EUI(candidate, dialect=netaddr.mac_unix_expanded)
    except (netaddr.AddrFormatError, TypeError, ValueError):
        raise InvalidOption(f"{text!r} is not a MAC address") from None
    if eui.version != 48:
        raise InvalidOption(f"{text!r} is not a 48-bit MAC address")
    return str(eui)


# Linux accepts at most 15 bytes, no '/', no whitespace, not '.' or '..'.
_IFNAME = re.compile(r"^[^/\s:]{1,15}$")


def valid_ifname(name: str) -> bool:
    return bool(_IFNAME.match(name)) and name not in (".", "..")


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


@attrs.frozen
class Network:
    id: str
    pool: tuple[str, ...]  # normalised MACs, in the order the user gave them
    gateway4: str | None = None
    gateway6: str | None = None
    subnets: tuple[str, ...] = ()
    options: Mapping[str, str] = attrs.field(factory=dict)


class Phase(str, enum.Enum):
    CREATED = "created"  # CreateEndpoint claimed the NIC
    JOINED = "joined"  # original state recorded, NIC renamed for transit
    LEFT = "left"  # dockerd said Leave; the NIC is on its way home
    RELEASING = "releasing"  # DeleteEndpoint came but the NIC was not home yet


@attrs.frozen
class Claim:
    """One endpoint's hold on one NIC of its network's pool."""

    endpoint_id: str
    network_id: str
    mac: str
    phase: Phase = Phase.CREATED
    original: NicState | None = None
    sandbox_key: str | None = None
    created_at: float = 0.0
    joined_at: float | None = None

    @property
    def transit_name(self) -> str:
        """The host name the NIC wears while lent: unique, so it can never
        collide with a name already inside the container (EEXIST on move)."""
        return "hn" + self.endpoint_id[:13]


@attrs.frozen
class State:
    networks: Mapping[str, Network] = attrs.field(factory=dict)
    claims: Mapping[str, Claim] = attrs.field(factory=dict)

    def network_of_mac(self, mac: str) -> Network | None:
        for network in self.networks.values():
            if mac in network.pool:
                return network
        return None

    def claim_of_mac(self, mac: str) -> Claim | None:
        for claim in self.claims.values():
            if claim.mac == mac:
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


# -- JSON form -------------------------------------------------------------

FORMAT_VERSION = 1


def state_to_json(state: State) -> dict[str, Any]:
    def nic(n: NicState | None) -> dict[str, Any] | None:
        return None if n is None else attrs.asdict(n, recurse=True)

    return {
        "version": FORMAT_VERSION,
        "networks": [
            {**attrs.asdict(n, recurse=False), "pool": list(n.pool),
             "subnets": list(n.subnets), "options": dict(n.options)}
            for n in state.networks.values()
        ],
        "claims": [
            {**attrs.asdict(c, recurse=False), "phase": c.phase.value,
             "original": nic(c.original)}
            for c in state.claims.values()
        ],
    }


def state_from_json(data: Mapping[str, Any]) -> State:
    if data.get("version") != FORMAT_VERSION:
        raise ValueError(f"unsupported state format {data.get('version')!r}")

    def nic(d: Mapping[str, Any] | None) -> NicState | None:
        if d is None:
            return None
        addresses = tuple(Address(**a) for a in d.get("addresses", ()))
        return NicState(name=d["name"], mac=d["mac"], mtu=d["mtu"], up=d["up"],
                        addresses=addresses)

    networks = {}
    for n in data.get("networks", ()):
        networks[n["id"]] = Network(
            id=n["id"], pool=tuple(n["pool"]), gateway4=n.get("gateway4"),
            gateway6=n.get("gateway6"), subnets=tuple(n.get("subnets", ())),
            options=dict(n.get("options", {})))
    claims = {}
    for c in data.get("claims", ()):
        claims[c["endpoint_id"]] = Claim(
            endpoint_id=c["endpoint_id"], network_id=c["network_id"], mac=c["mac"],
            phase=Phase(c["phase"]), original=nic(c.get("original")),
            sandbox_key=c.get("sandbox_key"), created_at=c.get("created_at", 0.0),
            joined_at=c.get("joined_at"))
    return State(networks=networks, claims=claims)
