"""Every change hostnic makes to a NIC, through pyroute2, and the only module
that imports it. All functions block: they run in hostnic's one netlink
thread, which owns the one IPRoute socket (reads go through ``hostnic.kernel.rtnl``
and the event-driven inventory instead).

pyroute2 costs ~100 ms and ~20 MiB to import: this module is loaded on the
first change, in that thread, not at start-up.
"""

from __future__ import annotations

import os
import threading
import time
from functools import partial
from typing import Any, Callable

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from hostnic.errors import HostError
from hostnic.kernel import record, rtnl
from hostnic.kernel.record import read_sysctls
from hostnic.state.model import USER_ADDRESS_FLAGS, Address, NicState, Route

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

    Each step stands on its own: a name taken by another link does not stop
    the rest. The order is the kernel's: the name and link settings, the
    sysctls (they govern what addresses do), the addresses (in recorded
    order, so primaries stay primaries), the admin state, then the routes
    (the kernel takes a route only through a link that is up).
    """
    ipr = _ipr()
    problems: list[str] = []

    def step(what: str, change: Callable[[], Any], present_is_fine: bool = False) -> None:
        try:
            change()
        except NetlinkError as e:
            # An address or route already there is restored; a name already
            # there belongs to another link.
            if not (present_is_fine and e.code == EEXIST):
                problems.append(f"{what}: {e}")
        except OSError as e:
            problems.append(f"{what}: {e.strerror or e}")

    found = rtnl.get_link_settings(index)
    if found is None:
        raise HostError(f"interface {index} vanished from the host")
    link, af_spec = found
    name = link.name
    if link.name != original.name:
        def put_name() -> None:
            nonlocal name
            if link.up:  # dockerd hands it back down; a kernel-returned one may differ
                ipr.link("set", index=index, state="down")
            ipr.link("set", index=index, ifname=original.name)
            name = original.name
        step(f"name {original.name}", put_name)
    if link.mtu != original.mtu:
        step(f"mtu {original.mtu}", lambda: ipr.link("set", index=index, mtu=original.mtu))
    if original.mac and link.mac != original.mac:
        step(f"mac {original.mac}", lambda: ipr.link("set", index=index, address=original.mac))
    settings = {key: value for key, value, now in (
        ("txqlen", original.txqlen, link.txqlen), ("group", original.group, link.group),
        ("ifalias", original.alias or "", link.alias or "")) if value is not None and value != now}
    if settings:
        step(f"{', '.join(settings)}", lambda: ipr.link("set", index=index, **settings))
    for altname in original.altnames:
        if altname not in link.altnames:
            step(f"altname {altname}",
                 partial(ipr.link, "property_add", index=index, altname=altname))
    problems += write_sysctls(name, original.sysctls, af_spec)
    present = {a.key for a in rtnl.addresses_of(index)} if original.addresses else set()
    for address in original.addresses:
        if address.key in present or address.privacy:
            continue  # privacy addresses are the kernel's to make again
        options = lifetimes(address, original.recorded_at)
        if options is None:
            problems.append(f"address {address}: its lease ran out while the NIC was lent "
                            f"(the host's DHCP client will ask again)")
            continue
        step(f"address {address}", partial(
            ipr.addr, "add", index=index, address=address.address,
            prefixlen=address.prefixlen, flags=address.flags & USER_ADDRESS_FLAGS, **options),
            present_is_fine=True)
    current_up = rtnl.get_link(index=index)
    if original.up and current_up is not None and not current_up.up:
        step("admin state up", lambda: ipr.link("set", index=index, state="up"))
    routes = {route_key(info.route) for info in rtnl.routes_via(index)} \
        if original.routes else set()
    for route in original.routes:
        if route_key(route) in routes:
            continue
        step(f"route {route}", partial(ipr.route, "add", **route_options(route, index)),
             present_is_fine=True)
    if not original.up and current_up is not None and current_up.up:
        step("admin state down", lambda: ipr.link("set", index=index, state="down"))
    return problems


def lifetimes(address: Address, recorded_at: float) -> dict[str, Any] | None:
    """The add options that keep a lease's remaining lifetimes; None if it ran out."""
    options: dict[str, Any] = {}
    if address.label:
        options["label"] = address.label
    if address.broadcast:
        options["broadcast"] = address.broadcast
    if address.valid is None:
        return options
    elapsed = int(time.time() - recorded_at) if recorded_at else 0
    valid = address.valid - elapsed
    if valid <= 0:
        return None
    preferred = max(0, min(valid, (address.preferred or 0) - elapsed))
    return {**options, "valid_lft": valid, "preferred_lft": preferred}


def route_key(route: Route) -> tuple[Any, ...]:
    return (route.family, route.dst, route.dst_len, route.table, route.priority or 0)


def route_options(route: Route, index: int) -> dict[str, Any]:
    options: dict[str, Any] = {
        "family": route.family, "dst_len": route.dst_len, "oif": index, "table": route.table,
        "proto": route.protocol, "scope": route.scope, "type": route.type}
    if route.dst is not None:
        options["dst"] = route.dst
    for key, value in (("gateway", route.gateway), ("priority", route.priority),
                       ("prefsrc", route.prefsrc)):
        if value is not None:
            options[key] = value
    return options


def write_sysctls(name: str, sysctls: tuple[tuple[str, str], ...],
                  af_spec: bytes | None = None) -> list[str]:
    """Write back the per-device sysctls that differ (a namespace move resets
    them all to the namespace's defaults); ``af_spec``: the link message's
    settings, read before a rename (a rename changes none of them)."""
    problems = []
    now = dict(read_sysctls(name, af_spec))
    for key, value in sysctls:
        if now.get(key) == value:
            continue
        family, _, entry = key.partition("/")
        try:
            fd = os.open(f"{record.SYSCTL_ROOT}/{family}/conf/{name}/{entry}",
                         os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.write(fd, value.encode())
            finally:
                os.close(fd)
        except OSError as e:
            problems.append(f"sysctl {key}={value}: {e.strerror or e}")
    return problems
