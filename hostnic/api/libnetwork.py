"""The libnetwork remote driver API's requests, parsed from their JSON bodies
into the core's commands (``hostnic.core.commands``).

Parsing is strict about shapes and lenient only where dockerd is (``Options``
may be null). Every failure is a BadRequest or InvalidOption whose message
names the offending field or value.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import attrs
import netaddr

from hostnic.core.commands import ClaimNic, DefineNetwork, EndpointKey, LendNic
from hostnic.errors import BadRequest, InvalidOption
from hostnic.sentences import quoted
from hostnic.state.model import normalize_mac, normalize_pci, valid_ifname

GENERIC = "com.docker.network.generic"
OPT_MAC = "hostnic_mac"
OPT_NAME = "hostnic_name"
OPT_PCI = "hostnic_pci"
NETWORK_OPTIONS = (OPT_MAC, OPT_NAME, OPT_PCI)
ENDPOINT_OPTIONS = (OPT_MAC, OPT_PCI)
_ID = re.compile(r"^[0-9a-zA-Z]{1,64}$")


def _field(body: Mapping[str, Any], name: str, kind: type, required: bool = True) -> Any:
    value = body.get(name)
    if value is None:
        if required:
            raise BadRequest(f"the request has no {name}")
        return None
    if not isinstance(value, kind):
        raise BadRequest(f"{name} must be a {kind.__name__}, not {type(value).__name__}")
    return value


def _id(body: Mapping[str, Any], name: str) -> str:
    value = _field(body, name, str)
    if not _ID.match(value):
        raise BadRequest(f"{name} {quoted(value)} is not a Docker object id")
    return str(value)


def _string_map(value: Any, where: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadRequest(f"{where} must be an object")
    for k, v in value.items():
        if not isinstance(v, str):
            raise InvalidOption(f"option {_names([k])} must be a string, not {type(v).__name__}")
    return dict(value)


def _split(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


def _plain_ip(cidr: str, where: str) -> str:
    """The address of a CIDR-form gateway (dockerd sends ``10.0.0.1/24``)."""
    try:
        if len(cidr) <= 64:
            return str(netaddr.IPNetwork(cidr).ip)
    except (netaddr.AddrFormatError, ValueError, TypeError):
        pass
    raise BadRequest(f"{where} {quoted(cidr)} is not an IP address")


def _subnet(value: str, where: str) -> str:
    try:
        if len(value) <= 64:
            netaddr.IPNetwork(value)
            return value
    except (netaddr.AddrFormatError, ValueError, TypeError):
        pass
    raise BadRequest(f"{where} {quoted(value)} is not a subnet")


@attrs.frozen
class IPData:
    pool: str | None
    gateway: str | None  # plain IP
    space: str | None = None  # "null" for --ipam-driver null


def _ip_data(body: Mapping[str, Any], name: str) -> list[IPData]:
    entries = _field(body, name, list, required=False) or []
    parsed = []
    for entry in entries:
        if not isinstance(entry, dict):
            raise BadRequest(f"{name} entries must be objects")
        pool = _field(entry, "Pool", str, required=False)
        gateway = _field(entry, "Gateway", str, required=False)
        space = _field(entry, "AddressSpace", str, required=False)
        parsed.append(IPData(pool=_subnet(pool, f"{name} pool") if pool else None,
                             gateway=_plain_ip(gateway, f"{name} gateway") if gateway else None,
                             space=space))
    return parsed


def define_network(body: Mapping[str, Any]) -> DefineNetwork:
    """CreateNetwork."""
    network_id = _id(body, "NetworkID")
    options = _field(body, "Options", dict, required=False) or {}
    generic = _string_map(options.get(GENERIC), f"Options[{GENERIC}]")
    unknown = sorted(k for k in generic if k not in NETWORK_OPTIONS)
    if unknown:
        raise InvalidOption(
            f"hostnic does not know the option{'s' if len(unknown) > 1 else ''} "
            f"{_names(unknown)}; it takes {OPT_MAC}=MAC[,MAC...], "
            f"{OPT_NAME}=IFNAME[,IFNAME...] and {OPT_PCI}=PCI[,PCI...]")
    macs = tuple(normalize_mac(m) for m in _split(generic.get(OPT_MAC, "")))
    names = tuple(_split(generic.get(OPT_NAME, "")))
    pcis = tuple(normalize_pci(p) for p in _split(generic.get(OPT_PCI, "")))
    for name in names:
        if not valid_ifname(name):
            raise InvalidOption(f"{OPT_NAME} {quoted(name)} is not an interface name")
    if not macs and not names and not pcis:
        raise InvalidOption(
            f"hostnic needs the NIC to hand out: give -o {OPT_MAC}=MAC, "
            f"-o {OPT_NAME}=IFNAME or -o {OPT_PCI}=PCI (several may be comma-separated)")
    v4 = _ip_data(body, "IPv4Data")
    v6 = _ip_data(body, "IPv6Data")
    # dockerd 20.10 and 26.1 send [{"AddressSpace": "null", "Pool": "0.0.0.0/0"}]
    # for --ipam-driver null: no addresses of Docker's, the NIC's own instead.
    adopt = any(d.space == "null" for d in v4 + v6)
    # dockerd refuses --ipv6 with the null IPAM driver ("does not handle
    # IPv6 address pool requests"): adopt mode carries the NIC's IPv6
    # address whenever the NIC has one.
    ipv6 = adopt or options.get("com.docker.network.enable_ipv6") is True
    return DefineNetwork(
        network_id=network_id,
        macs=tuple(dict.fromkeys(macs)),
        names=tuple(dict.fromkeys(names)),
        pcis=tuple(dict.fromkeys(pcis)),
        gateway4=None if adopt else next((d.gateway for d in v4 if d.gateway), None),
        gateway6=None if adopt else next((d.gateway for d in v6 if d.gateway), None),
        subnets=() if adopt else tuple(d.pool for d in v4 + v6 if d.pool),
        options=generic, adopt=adopt, ipv6=ipv6)


def endpoint_key(body: Mapping[str, Any]) -> EndpointKey:
    """DeleteEndpoint, Leave, EndpointOperInfo."""
    return EndpointKey(network_id=_id(body, "NetworkID"), endpoint_id=_id(body, "EndpointID"))


@attrs.frozen
class CreateEndpoint:
    """CreateEndpoint: the core's command, and which of the fields the answer
    could fill dockerd filled already (answering one of those, even unchanged,
    fails the endpoint)."""

    command: ClaimNic
    interface_has_mac: bool
    interface_has_address: bool = True  # dockerd's IPAM gave one: never answer one
    interface_has_address6: bool = True

    @classmethod
    def parse(cls, body: Mapping[str, Any]) -> CreateEndpoint:
        key = endpoint_key(body)
        interface = _field(body, "Interface", dict, required=False) or {}
        options = _field(body, "Options", dict, required=False) or {}
        # dockerd puts its own keys in endpoint Options; only ours are checked.
        unknown = sorted(k for k in options
                         if k.startswith("hostnic_") and k not in ENDPOINT_OPTIONS)
        if unknown:
            raise InvalidOption(f"hostnic does not know the endpoint option "
                                f"{_names(unknown)}; it takes {OPT_MAC}=MAC or {OPT_PCI}=PCI")
        for option in ENDPOINT_OPTIONS:
            if options.get(option) is not None and not isinstance(options[option], str):
                raise InvalidOption(f"{option} must be a string")
        pinned = normalize_mac(options[OPT_MAC]) if options.get(OPT_MAC) is not None else None
        pinned_pci = (normalize_pci(options[OPT_PCI]) if options.get(OPT_PCI) is not None
                      else None)
        requested_mac = _field(interface, "MacAddress", str, required=False) or ""
        if requested_mac:
            mac = normalize_mac(requested_mac)
            if pinned is not None and pinned != mac:
                raise InvalidOption(
                    f"--mac-address {mac} and {OPT_MAC}={pinned} name different NICs")
            pinned = mac
        address = _field(interface, "Address", str, required=False) or ""
        address6 = _field(interface, "AddressIPv6", str, required=False) or ""
        if pinned_pci is not None and pinned is not None:
            raise InvalidOption(f"pin a NIC by {OPT_MAC} (or --mac-address) or by {OPT_PCI}, "
                                f"not both")
        return cls(command=ClaimNic(key, pinned, pinned_pci),
                   interface_has_mac=bool(requested_mac),
                   interface_has_address=bool(address), interface_has_address6=bool(address6))


def lend_nic(body: Mapping[str, Any]) -> LendNic:
    """Join."""
    return LendNic(endpoint_key(body), _field(body, "SandboxKey", str, required=False))


def _names(keys: list[str]) -> str:
    """Option names for a message: each bounded, at most five of them."""
    shown = [k if len(k) <= 32 and k.isprintable() else quoted(k, 32) for k in keys[:5]]
    more = f" and {len(keys) - 5} more" if len(keys) > 5 else ""
    return ", ".join(shown) + more


def network_id_of(body: Mapping[str, Any]) -> str:
    return _id(body, "NetworkID")
