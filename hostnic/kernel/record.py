"""What hostnic reads of a NIC from the kernel (raw rtnetlink and sysctls,
no pyroute2): the whole record of it before it is lent, and the
configuration adopt mode hands to a container. Blocking: run in a thread."""

from __future__ import annotations

import os
import time
from typing import Sequence

from hostnic.errors import HostError
from hostnic.kernel import devconf, rtnl
from hostnic.state.model import (AF_INET, AF_INET6, RT_TABLE_LOCAL, RT_TABLE_MAIN, RTPROT_KERNEL,
                           RTPROT_RA, Address, Adopted, LinkInfo, NicState, Route)

# The host's net sysctls; twistd's --sysctl-dir moves it (a managed plugin).
SYSCTL_ROOT = "/proc/sys/net"
# Read-only or meaningless to copy back: the kernel refuses or ignores them.
UNRESTORABLE = {"ipv4/mc_forwarding", "ipv6/mc_forwarding", "ipv6/stable_secret"}


def restorable(info: rtnl.RouteInfo) -> bool:
    """A route someone made (not the kernel for an address or a router
    advertisement), not in the local table, through this link alone."""
    route = info.route
    return (not info.multipath and route.type == rtnl.RTN_UNICAST
            and route.protocol not in (RTPROT_KERNEL, RTPROT_RA)
            and route.table != RT_TABLE_LOCAL)


def read_sysctls(name: str, af_spec: bytes | None = None) -> tuple[tuple[str, str], ...]:
    """Every per-device sysctl of ``name`` (``ipv4/rp_filter``, ...): from the
    link message's ``af_spec`` where it carries one (hostnic.kernel.devconf),
    else from /proc."""
    carried = devconf.settings(af_spec) if af_spec is not None else {}
    present = devconf.families(af_spec) if af_spec is not None else None
    values = []
    for family in ("ipv4", "ipv6"):
        if present is not None and not present[family]:
            continue  # no IPv6 on this link, say
        directory = f"{SYSCTL_ROOT}/{family}/conf/{name}"
        names = _entries(family, directory)
        for entry in names:
            key = f"{family}/{entry}"
            if key in UNRESTORABLE:
                continue
            if key in carried:
                values.append((key, carried[key]))
                continue
            try:
                fd = os.open(f"{directory}/{entry}", os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                continue  # write-only, or the link just went
            try:
                values.append((key, os.read(fd, 4096).decode().strip()))
            except OSError:
                pass
            finally:
                os.close(fd)
    return tuple(values)


_ENTRIES: dict[str, tuple[str, ...]] = {}


def _entries(family: str, directory: str) -> tuple[str, ...]:
    """The sysctls of a device's directory: the kernel gives every device the
    same set, so it is listed once per family and root."""
    key = f"{SYSCTL_ROOT} {family}"
    names = _ENTRIES.get(key)
    if names is None:
        try:
            names = tuple(sorted(os.listdir(directory)))
        except FileNotFoundError:
            return ()  # no IPv6 on this host, say
        if names:  # (a link being torn down can show an empty directory)
            _ENTRIES[key] = names
    return names


def _link(index: int, on: rtnl.Session | None = None) -> LinkInfo:
    link = rtnl.get_link(index=index, on=on)
    if link is None:
        raise HostError(f"interface {index} vanished from the host")
    return link


def read(index: int, on: rtnl.Session | None = None) -> tuple[LinkInfo, NicState]:
    """The whole record of a NIC, from its name to its sysctls (the link
    message with its per-device settings, its routes and its addresses), and
    the link as that message showed it."""
    with rtnl.session(on) as s:
        found = rtnl.get_link_settings(index, s)
        if found is None:
            raise HostError(f"interface {index} vanished from the host")
        link, af_spec = found
        routes = tuple(info.route for info in rtnl.routes_via(index, s) if restorable(info))
        addresses = rtnl.addresses_of(index, s)
    return link, NicState(
        name=link.name, mac=link.mac or "", mtu=link.mtu, up=link.up,
        addresses=addresses, routes=routes, sysctls=read_sysctls(link.name, af_spec),
        alias=link.alias, altnames=link.altnames, txqlen=link.txqlen, group=link.group,
        recorded_at=time.time(), index=index)


def inspect(index: int, link: LinkInfo | None, with_record: bool,
            links_needed: bool) -> tuple[LinkInfo, set[int], list[LinkInfo] | None,
                                         NicState | None]:
    """What a guard and a lend need of a link, on one netlink socket: the link
    (asked of the kernel unless given; with the record, as the record saw
    it), the links the host's default routes leave by, every link of the
    namespace (to find its upper devices) if asked, and its whole record if
    asked."""
    state = None
    with rtnl.session() as s:
        if with_record:
            link, state = read(index, s)
        link = link or _link(index, s)
        defaults = rtnl.host_default_links(s)
        links = rtnl.dump_links(s) if links_needed else None
    return link, defaults, links, state


def adopt(index: int) -> Adopted:
    """The configuration a container gets in adopt mode from this NIC."""
    with rtnl.session() as s:
        _link(index, s)  # the dumps below answer nothing, not an error, for a vanished one
        routes = [info.route for info in rtnl.routes_via(index, s) if restorable(info)]
        addresses = rtnl.addresses_of(index, s)
    return adoption(addresses, routes, time.time())


def adoption(addresses: Sequence[Address], routes: Sequence[Route], now: float) -> Adopted:
    """What adopt mode hands over of a NIC's addresses (in kernel order) and
    routes: its first usable IPv4 and IPv6 addresses (primaries first), its
    own default gateways (the main table's first, else another table's,
    lowest metric first) and its other routes, one per destination."""
    usable = [a for a in addresses if a.usable]
    v4 = [a for a in usable if a.family == AF_INET]
    v6 = [a for a in usable if a.family == AF_INET6]
    ordered = sorted(routes, key=lambda r: (r.table != RT_TABLE_MAIN, r.priority or 0))

    def gateway(family: int) -> str | None:
        return next((r.gateway for r in ordered if r.family == family and r.default
                     and r.gateway), None)

    others: dict[tuple[int, str], Route] = {}
    for route in ordered:
        if not route.default:
            others.setdefault((route.family, route.destination), route)
    return Adopted(address4=v4[0] if v4 else None, address6=v6[0] if v6 else None,
                   gateway4=gateway(AF_INET), gateway6=gateway(AF_INET6),
                   routes=tuple(others.values()), not_carried=tuple(v4[1:] + v6[1:]),
                   read_at=now)
