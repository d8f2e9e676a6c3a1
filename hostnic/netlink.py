"""Every netlink operation hostnic performs on a NIC, and the only module that
imports pyroute2. All functions block: the core calls them in threads.

Each pool thread owns its own IPRoute socket (one owner per socket).
"""

from __future__ import annotations

import socket
import threading
from typing import Any, Iterable

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from hostnic.errors import HostError
from hostnic.linkwatch import LinkInfo, dump_links
from hostnic.model import Address, NicRef, NicState

ENODEV, EEXIST, EBUSY = 19, 17, 16
_local = threading.local()


def _ipr() -> IPRoute:
    ipr = getattr(_local, "ipr", None)
    if ipr is None:
        # strict_check lets the kernel filter dumps (addresses of one link)
        # instead of sending every address of the host to be filtered here.
        ipr = _local.ipr = IPRoute(strict_check=True)
    return ipr


def forget_thread_socket() -> None:
    """Close this thread's socket: for callers that move the thread to another
    network namespace (a socket stays bound to the namespace it was made in)."""
    ipr = getattr(_local, "ipr", None)
    if ipr is not None:
        ipr.close()
        _local.ipr = None


def _link_info(msg: Any) -> LinkInfo:
    linkinfo = msg.get("linkinfo")
    return LinkInfo(
        index=msg["index"], name=msg.get("ifname") or "", mac=msg.get("address"),
        mtu=msg.get("mtu") or 0, flags=msg["flags"],
        kind=linkinfo.get("kind") if linkinfo is not None else None,
        perm=msg.get("perm_address"))


def get_link(index: int | None = None, name: str | None = None) -> LinkInfo | None:
    """A targeted get (about 1 ms whatever the number of links); None if absent."""
    query = {"index": index} if index is not None else {"ifname": name}
    try:
        return _link_info(_ipr().link("get", **query)[0])
    except NetlinkError as e:
        if e.code == ENODEV:
            return None
        raise HostError(f"netlink get of {query} failed: {e}") from e


def find_nic(nic: NicRef, hints: Iterable[int] = (), name: str | None = None,
             may_dump: bool = False) -> LinkInfo | None:
    """The host link that is ``nic``: its transit ``name`` (a name hostnic gave
    it is proof enough: the MAC may have been changed while it was lent), then
    the inventory's candidate indexes, each confirmed by a targeted get. Only
    ``may_dump`` (the inventory is not current) allows a dump of every link."""
    if name is not None:
        link = get_link(name=name)
        if link is not None:
            return link
    for index in hints:
        link = get_link(index=index)
        if link is not None and nic.matches(link.mac, link.perm):
            return link
    if may_dump:
        matches = [link for link in dump_links() if nic.matches(link.mac, link.perm)]
        return matches[0] if matches else None
    return None


def default_route_ifindexes() -> set[int]:
    """Indexes of links that carry an IPv4 or IPv6 default route, any table."""
    found: set[int] = set()
    for family in (socket.AF_INET, socket.AF_INET6):
        for route in _ipr().route("dump", family=family):
            if route["dst_len"] != 0:
                continue
            if route.get("oif"):
                found.add(route.get("oif"))
            for hop in route.get("multipath") or ():
                found.add(hop["oif"])
    return found


def carries_default_route(index: int) -> bool:
    """Whether an IPv4 or IPv6 default route (any table) goes out of this link.
    The kernel filters the dump by output interface (strict checking), so the
    cost does not grow with the host's routing tables."""
    for family in (socket.AF_INET, socket.AF_INET6):
        for route in _ipr().route("dump", family=family, oif=index):
            if route["dst_len"] == 0:
                return True
    return False


def read_state(index: int) -> NicState:
    """Name, MAC, MTU, admin state and addresses of a host NIC."""
    link = get_link(index=index)
    if link is None:
        raise HostError(f"interface {index} vanished from the host")
    addresses = tuple(
        Address(family=a["family"], address=a.get("address"), prefixlen=a["prefixlen"])
        for a in _ipr().get_addr(index=index))
    return NicState(name=link.name, mac=link.mac or "", mtu=link.mtu, up=link.up,
                    addresses=addresses)


def all_addresses() -> dict[int, list[Address]]:
    """Every address of the namespace, by link index (one dump, for the admin view)."""
    found: dict[int, list[Address]] = {}
    for a in _ipr().get_addr():
        found.setdefault(a["index"], []).append(
            Address(family=a["family"], address=a.get("address"), prefixlen=a["prefixlen"]))
    return found


def rename(index: int, name: str) -> None:
    """Set the link down and rename it (the kernel refuses to rename an up link)."""
    ipr = _ipr()
    try:
        ipr.link("set", index=index, state="down")
        ipr.link("set", index=index, ifname=name)
    except NetlinkError as e:
        raise HostError(f"could not rename interface {index} to {name}: {e}") from e


def restore(index: int, original: NicState) -> list[str]:
    """Put a returned NIC back as it was recorded; returns what was not possible.

    Each step is independent: a name taken by another link does not stop the
    MTU, MAC, addresses and admin state from coming back.
    """
    ipr = _ipr()
    problems: list[str] = []
    link = get_link(index=index)
    if link is None:
        raise HostError(f"interface {index} vanished from the host")
    if link.name != original.name:
        try:
            ipr.link("set", index=index, state="down")
            ipr.link("set", index=index, ifname=original.name)
        except NetlinkError as e:
            problems.append(f"name {original.name}: {e}")
    if link.mtu != original.mtu:
        try:
            ipr.link("set", index=index, mtu=original.mtu)
        except NetlinkError as e:
            problems.append(f"mtu {original.mtu}: {e}")
    if original.mac and link.mac != original.mac:
        try:
            ipr.link("set", index=index, address=original.mac)
        except NetlinkError as e:
            problems.append(f"mac {original.mac}: {e}")
    for address in original.addresses:
        try:
            ipr.addr("add", index=index, address=address.address,
                     prefixlen=address.prefixlen)
        except NetlinkError as e:
            if e.code != EEXIST:
                problems.append(f"address {address}: {e}")
    try:
        ipr.link("set", index=index, state="up" if original.up else "down")
    except NetlinkError as e:
        problems.append(f"admin state: {e}")
    return problems
