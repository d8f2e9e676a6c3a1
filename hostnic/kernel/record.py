"""What hostnic reads of a NIC from the kernel (raw rtnetlink and sysctls,
no pyroute2): the whole record of it before it is lent, and the
configuration adopt mode hands to a container. Blocking: run in a thread."""

from __future__ import annotations

import os
import time
from typing import Sequence

from hostnic.errors import HostError
from hostnic.kernel import rtnl
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


def read_sysctls(name: str) -> tuple[tuple[str, str], ...]:
    """Every per-device sysctl of ``name`` (``ipv4/rp_filter``, ...)."""
    values = []
    for family in ("ipv4", "ipv6"):
        directory = f"{SYSCTL_ROOT}/{family}/conf/{name}"
        try:
            names = sorted(os.listdir(directory))
        except FileNotFoundError:
            continue  # no IPv6 on this host, say
        for entry in names:
            key = f"{family}/{entry}"
            if key in UNRESTORABLE:
                continue
            try:
                fd = os.open(f"{directory}/{entry}", os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                continue  # write-only
            try:
                values.append((key, os.read(fd, 4096).decode().strip()))
            except OSError:
                pass
            finally:
                os.close(fd)
    return tuple(values)


def _link(index: int, on: rtnl.Session | None = None) -> LinkInfo:
    link = rtnl.get_link(index=index, on=on)
    if link is None:
        raise HostError(f"interface {index} vanished from the host")
    return link


def read(index: int, link: LinkInfo | None = None, on: rtnl.Session | None = None) -> NicState:
    """The whole record of a NIC, from its name to its sysctls (``link``: the
    kernel's current view of it, if the caller has one)."""
    with rtnl.session(on) as s:
        link = link or _link(index, s)
        routes = tuple(info.route for info in rtnl.routes_via(index, s) if restorable(info))
        addresses = rtnl.addresses_of(index, s)
    return NicState(
        name=link.name, mac=link.mac or "", mtu=link.mtu, up=link.up,
        addresses=addresses, routes=routes, sysctls=read_sysctls(link.name),
        alias=link.alias, altnames=link.altnames, txqlen=link.txqlen, group=link.group,
        recorded_at=time.time(), index=index)


def inspect(index: int, link: LinkInfo | None, with_record: bool,
            links_needed: bool) -> tuple[LinkInfo, set[int], list[LinkInfo] | None,
                                         NicState | None]:
    """What a guard and a lend need of a link, on one netlink socket: the link
    (asked of the kernel unless given), the links the host's default routes
    leave by, every link of the namespace (to find its upper devices) if
    asked, and its whole record if asked."""
    with rtnl.session() as s:
        link = link or _link(index, s)
        defaults = rtnl.host_default_links(s)
        links = rtnl.dump_links(s) if links_needed else None
        state = read(index, link, s) if with_record else None
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
