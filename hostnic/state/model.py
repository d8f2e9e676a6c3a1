"""Value types of hostnic's state.

Everything here is immutable: the ledger replaces the whole ``State`` on each
change, so a change that cannot be saved is undone by putting the old value
back. The JSON form of these types lives in ``hostnic.state.fileformat``.
"""

from __future__ import annotations

import enum
import hashlib
import re
from typing import Mapping

import attrs
import netaddr

from hostnic.errors import InvalidOption
from hostnic.sentences import quoted, short


# The common notations of a 48-bit MAC: six groups (":" or "-"), three dotted
# groups of four, or twelve bare digits. netaddr reads more (bare integers,
# EUI-64, and "52:54:00" as three 16-bit groups): a NIC's MAC is none of those.
_MAC = re.compile(r"^(?:[0-9a-fA-F]{1,2}([:-])(?:[0-9a-fA-F]{1,2}\1){4}[0-9a-fA-F]{1,2}"
                  r"|[0-9a-fA-F]{4}\.[0-9a-fA-F]{4}\.[0-9a-fA-F]{4}|[0-9a-fA-F]{12})$")


def normalize_mac(text: str) -> str:
    """Canonical ``aa:bb:cc:dd:ee:ff`` for any common notation of a 48-bit MAC."""
    candidate = text.strip()
    if len(candidate) > 32 or not _MAC.match(candidate):
        raise InvalidOption(f"{quoted(text)} is not a MAC address")
    try:
        eui = netaddr.EUI(candidate, dialect=netaddr.mac_unix_expanded)
    except (netaddr.AddrFormatError, TypeError, ValueError):
        raise InvalidOption(f"{quoted(text)} is not a MAC address") from None
    if eui.version != 48:
        raise InvalidOption(f"{quoted(text)} is not a 48-bit MAC address")
    return str(eui)


_PCI = re.compile(r"^(?:([0-9a-fA-F]{4}):)?([0-9a-fA-F]{2}):([0-9a-fA-F]{2})\.([0-7])$")


def is_full_pci(text: str) -> bool:
    """Whether ``text`` is a PCI address as the kernel writes one (domain and all)."""
    found = _PCI.match(text)
    return found is not None and found.group(1) is not None and text == text.lower()


def normalize_pci(text: str) -> str:
    """Canonical ``dddd:bb:ss.f`` for a PCI address (domain 0000 if left out)."""
    found = _PCI.match(text.strip()) if len(text) <= 32 else None
    if found is None:
        raise InvalidOption(f"{quoted(text)} is not a PCI address (like 0000:00:05.0)")
    domain, bus, slot, function = found.groups()
    return f"{(domain or '0000').lower()}:{bus.lower()}:{slot.lower()}.{function}"


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
    """How hostnic recognises one NIC wherever it has been, the one key the
    state file, the inventory, pools, pins, views and the admin API use: the
    MAC it had when it joined a pool, its permanent hardware address where the
    kernel reports one, and its PCI address if it was named by one (an SR-IOV
    VF, a NIC whose MAC a cloud rewrites): both survive a MAC changed by a
    container, an admin or a cloud. While lent, the NIC is also known by its
    endpoint's transit name."""

    mac: str
    perm: str | None = None
    pci: str | None = None  # the PCI address it was named by (-o hostnic_pci)

    def same_nic(self, other: NicRef) -> bool:
        return (self.mac == other.mac or (self.perm is not None and self.perm == other.perm)
                or (self.pci is not None and self.pci == other.pci))

    def matches(self, mac: str | None, perm: str | None, pci: str | None = None) -> bool:
        """Whether a link with these addresses may be this NIC (to look it up)."""
        return ((mac is not None and mac == self.mac)
                or (self.perm is not None and perm == self.perm)
                or (self.pci is not None and pci == self.pci))

    def is_link(self, link: LinkInfo, lent_index: int | None = None) -> bool:
        """Whether ``link`` is this NIC, proven before hostnic names it to
        dockerd or changes it. A NIC named by its PCI address is the link on
        that device (a virtio NIC's device is its virtio device, on the PCI
        one, and a kernel before 5.16 names none: then what follows decides);
        one with a permanent address is the link with that address (a VLAN, a
        bridge or a macvlan can wear its MAC, and reports no device and no
        permanent address). One with
        neither (a virtual NIC) is, once lent, the link with the interface index
        it had then (a namespace move keeps it unless the namespace it enters
        holds that index: ``proven`` then falls back on the MAC), and before,
        the link with its MAC. A name proves nothing: any link may wear one."""
        if self.pci is not None:
            if link.pci is not None:
                # Two ports of one PCI function share its address: their
                # permanent addresses, where both are known, tell them apart.
                return link.pci == self.pci and (
                    self.perm is None or link.perm is None or link.perm == self.perm)
            if link.kind is not None:  # a VLAN, a macvlan: on no device, not the NIC
                return False
        if self.perm is not None:
            return link.perm == self.perm
        if lent_index is not None:
            return link.index == lent_index
        return link.mac == self.mac

    @property
    def key(self) -> str:
        """The key of this NIC's lock: every reference to one NIC is a copy of
        its pool entry, so the pooled MAC names it consistently."""
        return self.mac

    def __str__(self) -> str:
        return self.mac


IFF_UP, IFF_LOOPBACK, IFF_LOWER_UP = 0x1, 0x8, 0x10000  # link flags


@attrs.frozen
class LinkInfo:
    """A link of a network namespace, as the kernel reports it."""

    index: int
    name: str
    mac: str | None
    mtu: int
    flags: int
    kind: str | None  # IFLA_INFO_KIND: None for a physical NIC
    perm: str | None = None  # IFLA_PERM_ADDRESS, where the kernel reports one
    master: int | None = None  # the bridge, bond or team it is a port of
    link: int | None = None  # the link it sits on (a macvlan's or vlan's parent)
    link_netnsid: int | None = None  # set when that link is in another namespace
    alias: str | None = None
    altnames: tuple[str, ...] = ()
    txqlen: int | None = None
    group: int | None = None
    parent_bus: str | None = None  # IFLA_PARENT_DEV_BUS_NAME: "pci", "virtio", ...
    parent_dev: str | None = None  # IFLA_PARENT_DEV_NAME: its device on that bus

    @property
    def pci(self) -> str | None:
        """The PCI address of the device the link is on, where the kernel says."""
        return self.parent_dev if self.parent_bus == "pci" else None

    @property
    def up(self) -> bool:
        return bool(self.flags & IFF_UP)

    @property
    def carrier(self) -> bool:
        return bool(self.flags & IFF_LOWER_UP)

    @property
    def loopback(self) -> bool:
        return bool(self.flags & IFF_LOOPBACK)


@attrs.frozen
class LinkFacts:
    """What the guards and a lend need to know of a link, read at once: the
    link, the bridge or bond it is a port of, the devices built on it, whether
    the host's own default route leaves by it, and (to lend it) its record."""

    link: LinkInfo
    master: LinkInfo | None = None
    uppers: tuple[LinkInfo, ...] = ()
    host_default: bool = False
    state: "NicState | None" = None


# Address flags (IFA_F_*). IPv6 calls 0x01 "temporary": a privacy address.
IFA_F_SECONDARY = IFA_F_TEMPORARY = 0x01
IFA_F_NODAD, IFA_F_OPTIMISTIC, IFA_F_DADFAILED, IFA_F_HOMEADDRESS = 0x02, 0x04, 0x08, 0x10
IFA_F_DEPRECATED, IFA_F_TENTATIVE, IFA_F_PERMANENT = 0x20, 0x40, 0x80
IFA_F_MANAGETEMPADDR, IFA_F_NOPREFIXROUTE, IFA_F_MCAUTOJOIN = 0x100, 0x200, 0x400
# The flags a user sets; the others are the kernel's to decide.
USER_ADDRESS_FLAGS = (IFA_F_NODAD | IFA_F_OPTIMISTIC | IFA_F_HOMEADDRESS | IFA_F_MANAGETEMPADDR
                      | IFA_F_NOPREFIXROUTE | IFA_F_MCAUTOJOIN)
AF_INET, AF_INET6 = 2, 10
RT_SCOPE_UNIVERSE = 0
FLAG_NAMES = {0x02: "nodad", 0x04: "optimistic", 0x08: "dadfailed", 0x10: "homeaddress",
              0x20: "deprecated", 0x40: "tentative", 0x100: "managetempaddr",
              0x200: "noprefixroute", 0x400: "mcautojoin", 0x800: "stable-privacy"}


@attrs.frozen
class Address:
    """One address of a NIC, as the kernel reports it."""

    family: int  # socket.AF_INET or socket.AF_INET6
    address: str
    prefixlen: int
    flags: int = 0  # IFA_F_*: secondary, nodad, noprefixroute, ...
    label: str | None = None  # IPv4 labels (eth0:1)
    valid: int | None = None  # seconds of lease left when read; None: forever
    preferred: int | None = None
    scope: int = RT_SCOPE_UNIVERSE
    broadcast: str | None = None  # IPv4

    @property
    def key(self) -> tuple[int, str, int]:
        """What names the address: flags, label and lifetimes are properties of it."""
        return self.family, self.address, self.prefixlen

    @property
    def global_scope(self) -> bool:
        return self.scope == RT_SCOPE_UNIVERSE

    @property
    def privacy(self) -> bool:
        """An IPv6 privacy address: the kernel's to make again, nobody's to copy."""
        return self.family == AF_INET6 and bool(self.flags & IFA_F_TEMPORARY)

    @property
    def usable(self) -> bool:
        """Global, settled (not tentative, failed or deprecated) and not a
        privacy address: one a container can take."""
        return (self.global_scope and not self.privacy
                and not self.flags & (IFA_F_TENTATIVE | IFA_F_DADFAILED | IFA_F_DEPRECATED))

    @property
    def cidr(self) -> str:
        return f"{self.address}/{self.prefixlen}"

    def __str__(self) -> str:
        extra = [name for bit, name in FLAG_NAMES.items() if self.flags & bit]
        if self.valid is not None:
            extra.append(f"valid {self.valid}s")
        return f"{self.address}/{self.prefixlen}" + (f" ({', '.join(extra)})" if extra else "")


RT_TABLE_MAIN, RT_TABLE_LOCAL = 254, 255
RTPROT_KERNEL, RTPROT_RA = 2, 9


@attrs.frozen
class Route:
    """One route through a NIC, in whichever table it lives."""

    family: int
    dst: str | None  # None: the default route
    dst_len: int
    gateway: str | None = None
    table: int = RT_TABLE_MAIN
    priority: int | None = None  # the metric
    protocol: int = 3  # RTPROT_BOOT, what `ip route add` makes
    scope: int = RT_SCOPE_UNIVERSE
    type: int = 1  # RTN_UNICAST
    prefsrc: str | None = None

    @property
    def default(self) -> bool:
        return self.dst_len == 0

    @property
    def destination(self) -> str:
        if self.default:
            return "0.0.0.0/0" if self.family == 2 else "::/0"
        return f"{self.dst}/{self.dst_len}"

    def __str__(self) -> str:
        parts = ["default" if self.default else self.destination]
        if self.gateway:
            parts.append(f"via {self.gateway}")
        if self.table != RT_TABLE_MAIN:
            parts.append(f"table {self.table}")
        if self.priority is not None:
            parts.append(f"metric {self.priority}")
        if self.prefsrc:
            parts.append(f"src {self.prefsrc}")
        return " ".join(parts)


@attrs.frozen
class NicState:
    """What a NIC looked like in the host namespace before hostnic lent it:
    everything a namespace move or a container can take from it."""

    name: str
    mac: str
    mtu: int
    up: bool
    addresses: tuple[Address, ...] = ()  # in the kernel's order: primaries first
    routes: tuple[Route, ...] = ()  # through it, in every table, not made by the kernel
    sysctls: tuple[tuple[str, str], ...] = ()  # ("ipv4/rp_filter", "1"), ...
    alias: str | None = None
    altnames: tuple[str, ...] = ()
    txqlen: int | None = None
    group: int | None = None
    recorded_at: float = 0.0  # wall clock, to age lease lifetimes
    index: int | None = None  # its interface index (see NicRef.is_link)

    def shown_by(self, name: str, mac: str | None, mtu: int, up: bool) -> bool:
        """Whether a link looks restored to this state (what a link event shows;
        addresses come back in the same restore as these)."""
        return (name, mac, mtu, up) == (self.name, self.mac, self.mtu, self.up)


@attrs.frozen
class Inside:
    """A link as it is inside a namespace handed to hostnic (a CNI sandbox)."""

    link: LinkInfo
    addresses: tuple[Address, ...]
    routes: tuple[Route, ...]  # not the kernel's own


@attrs.frozen
class Adopted:
    """A NIC's own configuration, as adopt mode hands it to a container.
    A Docker endpoint holds one IPv4 and one IPv6 address: the others of the
    NIC are named in ``not_carried``."""

    address4: Address | None = None
    address6: Address | None = None
    gateway4: str | None = None
    gateway6: str | None = None
    routes: tuple[Route, ...] = ()  # other routes through the NIC, as Join's StaticRoutes
    not_carried: tuple[Address, ...] = ()
    read_at: float = 0.0


@attrs.frozen
class Network:
    id: str
    pool: tuple[NicRef, ...]  # in the order the user gave them
    gateway4: str | None = None
    gateway6: str | None = None
    subnets: tuple[str, ...] = ()
    options: Mapping[str, str] = attrs.field(factory=dict)
    # Adopt mode (--ipam-driver null): each NIC brings its own configuration.
    adopt: bool = False
    ipv6: bool = False
    adopted: Mapping[str, Adopted] = attrs.field(factory=dict)  # by pool MAC

    def entry(self, nic: NicRef) -> NicRef | None:
        """This network's pool entry for ``nic``, if it holds that NIC."""
        return next((ref for ref in self.pool if ref.same_nic(nic)), None)

    @property
    def macs(self) -> list[str]:
        return [ref.mac for ref in self.pool]


@attrs.frozen
class Attachment:
    """What a CNI runtime names a claim by: its network (the configuration's
    ``name``), the container and the interface name inside it. A claim
    with an attachment was made by the CNI front end; without, by dockerd."""

    network: str
    container_id: str
    ifname: str

    @property
    def endpoint_id(self) -> str:
        """The claim's key: stable for the attachment (a hash of its names;
        its first 13 characters name its transit name, and a claim whose
        transit name another already wears is refused)."""
        text = "\0".join(("cni", self.network, self.container_id, self.ifname))
        return hashlib.sha256(text.encode()).hexdigest()

    @property
    def network_id(self) -> str:
        return CNI_NETWORK_PREFIX + self.network


CNI_NETWORK_PREFIX = "cni:"  # a CNI claim's network_id: no Docker network id has a colon


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
    adopted: Adopted | None = None  # what adopt mode gave this endpoint
    attachment: Attachment | None = None  # a CNI claim's names

    @property
    def mac(self) -> str:
        return self.nic.mac

    @property
    def holder(self) -> str:
        """Who holds the NIC, as a user knows it."""
        a = self.attachment
        if a is None:
            return f"endpoint {short(self.endpoint_id)}"
        return (f"container {short(a.container_id)} as {a.ifname} "
                f"(CNI network {quoted(a.network)})")

    @property
    def transit_name(self) -> str:
        return transit_name(self.endpoint_id)

    @property
    def lent_index(self) -> int | None:
        """The NIC's interface index when it was recorded for the lend."""
        return self.original.index if self.original is not None else None


@attrs.frozen
class State:
    networks: Mapping[str, Network] = attrs.field(factory=dict)
    claims: Mapping[str, Claim] = attrs.field(factory=dict)

    def network_of(self, nic: NicRef) -> Network | None:
        for network in self.networks.values():
            if network.entry(nic) is not None:
                return network
        return None

    def claim_of(self, nic: NicRef) -> Claim | None:
        for claim in self.claims.values():
            if claim.nic.same_nic(nic):
                return claim
        return None

    def claim_of_link(self, mac: str | None, perm: str | None, name: str,
                      pci: str | None = None) -> Claim | None:
        """The claim a host link belongs to: by its transit name, its MAC or its
        permanent address."""
        for claim in self.claims.values():
            if name == claim.transit_name or claim.nic.matches(mac, perm, pci):
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


def proven(nic: NicRef, links: list[LinkInfo], lent_index: int | None) -> LinkInfo | None:
    """Of the links that may be ``nic`` (by name or address), the one that
    proves to be it (``NicRef.is_link``). A lent virtual NIC that no link
    proves to be by its index was renumbered by a namespace move (the one it
    entered held that index): its MAC is all that is left to know it by."""
    found = next((link for link in links if nic.is_link(link, lent_index)), None)
    if found is None and nic.perm is None and nic.pci is None and lent_index is not None:
        found = next((link for link in links if link.mac == nic.mac), None)
    return found
