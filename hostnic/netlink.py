"""Every change hostnic makes to a NIC, through pyroute2, and the only module
that imports it. All functions block: they run in hostnic's one netlink
thread, which owns the one IPRoute socket (reads go through ``hostnic.rtnl``
and the event-driven inventory instead).

pyroute2 costs ~100 ms and ~20 MiB to import: this module is loaded on the
first change, in that thread, not at start-up.
"""

from __future__ import annotations

import threading
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from hostnic import rtnl
from hostnic.errors import HostError
from hostnic.model import NicState

EEXIST = 17
_local = threading.local()


def _ipr() -> Any:
    ipr = getattr(_local, "ipr", None)
    if ipr is None:
        ipr = _local.ipr = IPRoute()
    return ipr


def forget_thread_socket() -> None:
    """Close this thread's socket: for callers that move the thread to another
    network namespace (a socket stays bound to the namespace it was made in)."""
    ipr = getattr(_local, "ipr", None)
    if ipr is not None:
        ipr.close()
        _local.ipr = None


def rename(index: int, name: str, up: bool = True) -> None:
    """Set the link down (unless it is already: each change costs ~0.2 ms of
    pyroute2) and rename it (the kernel refuses to rename an up link; if the
    rename fails, the link stays down: the caller restores it)."""
    ipr = _ipr()
    try:
        if up:
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
    link = rtnl.get_link(index=index)
    if link is None:
        raise HostError(f"interface {index} vanished from the host")
    if link.name != original.name:
        try:
            if link.up:  # dockerd hands it back down; a kernel-returned one may differ
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
    present = set(rtnl.addresses_of(index)) if original.addresses else set()
    for address in original.addresses:
        if address in present:
            continue
        try:
            ipr.addr("add", index=index, address=address.address, prefixlen=address.prefixlen)
        except NetlinkError as e:
            if e.code != EEXIST:
                problems.append(f"address {address}: {e}")
    if link.up != original.up or link.name != original.name:
        try:
            ipr.link("set", index=index, state="up" if original.up else "down")
        except NetlinkError as e:
            problems.append(f"admin state: {e}")
    return problems
