"""Every change hostnic makes to a NIC. Requests are built with pyroute2's
rtnetlink message classes (``ifinfmsg``, ``ifaddrmsg``, ``rtmsg``), sent in
batches on this thread's raw netlink socket (``hostnic.kernel.rtnl.Session``),
and their acknowledgements read together: the kernel runs a batch's
requests in order and answers each, so each step still succeeds or fails on
its own. All functions block: they run in hostnic's one netlink thread.

The message classes cost ~30 ms and ~1 MiB to import (hostnic.kernel.messages):
this module is loaded on the first change, in that thread, not at start-up.
"""

from __future__ import annotations

import errno
import os
import threading
import time
from typing import Any

from hostnic.errors import HostError
from hostnic.kernel import record, rtnl
from hostnic.kernel.messages import ifaddrmsg, ifinfmsg, rtmsg
from hostnic.kernel.record import read_sysctls
from hostnic.kernel.rtnl import NLM_F_REQUEST, RTM_NEWADDR, RTM_NEWROUTE
from hostnic.state.model import AF_INET, IFF_UP, USER_ADDRESS_FLAGS, Address, NicState, Route

RTM_SETLINK, RTM_NEWLINKPROP = 19, 108
NLM_F_ACK, NLM_F_EXCL, NLM_F_CREATE = 0x4, 0x200, 0x400
ADD = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
SET = NLM_F_REQUEST | NLM_F_ACK
RT_TABLE_COMPAT = 252  # the header's table when RTA_TABLE holds one above 255
_local = threading.local()


def _session() -> rtnl.Session:
    session = getattr(_local, "session", None)
    if session is None:
        session = _local.session = rtnl.Session()
    return session


def forget_thread_socket() -> None:
    """Close this thread's socket: for callers that move the thread to another
    network namespace (a socket stays bound to the namespace it was made in)."""
    session = getattr(_local, "session", None)
    if session is not None:
        session.close()
        _local.session = None


class Batch:
    """Change requests sent together; ``send`` returns the steps that failed,
    with their errno (an address or route already there counts as made)."""

    def __init__(self) -> None:
        self.steps: list[tuple[str, Any, bool]] = []

    def add(self, what: str, msg: Any, msg_type: int, flags: int,
            present_is_fine: bool = False) -> None:
        msg["header"]["type"] = msg_type
        msg["header"]["flags"] = flags
        self.steps.append((what, msg, present_is_fine))

    def rename(self, what: str, index: int, name: str, up: bool) -> None:
        """Set the link down if it is up (the kernel renames only a link that
        is down), then rename it; both steps are ``what``."""
        if up:
            self.add(what, link_change(index, up=False), RTM_SETLINK, SET)
        self.add(what, link_change(index, {"IFLA_IFNAME": name}), RTM_SETLINK, SET)

    def send(self, on: rtnl.Session | None = None) -> list[tuple[str, int]]:
        """On this thread's socket, or ``on`` (a namespace handed over)."""
        if not self.steps:
            return []
        session = on or _session()
        for _what, msg, _fine in self.steps:
            msg["header"]["sequence_number"] = session.next_sequence()
            msg.encode()
        try:
            codes = session.acknowledged([msg.data for _what, msg, _fine in self.steps])
        except BaseException:
            # Unread acknowledgements would answer the next batch. A handed
            # namespace's socket cannot be made again (that needs entering
            # it): it is drained instead.
            if on is None:
                forget_thread_socket()
            else:
                on.drain()
            raise
        return [(what, code) for (what, _msg, present_is_fine), code in zip(self.steps, codes)
                if code and not (present_is_fine and code == errno.EEXIST)]


def sentences(failed: list[tuple[str, int]]) -> list[str]:
    return [f"{what}: {os.strerror(code)}" for what, code in failed]


def link_change(index: int, attrs: dict[str, Any] | None = None,
                up: bool | None = None) -> Any:
    """A request that sets a link's attributes (``{"IFLA_IFNAME": ...}``) and,
    if ``up`` is not None, its admin state."""
    msg = ifinfmsg()
    msg["index"] = index
    if up is not None:
        msg["flags"], msg["change"] = (IFF_UP if up else 0), IFF_UP
    msg["attrs"] = list((attrs or {}).items())
    return msg


def altname_change(index: int, altname: str) -> Any:
    msg = ifinfmsg()
    msg["index"] = index
    msg["attrs"] = [("IFLA_PROP_LIST", {"attrs": [("IFLA_ALT_IFNAME", altname)]})]
    return msg


def remaining(address: Address, recorded_at: float) -> tuple[int, int] | None:
    """A lease's remaining (valid, preferred) lifetimes; None if it ran out."""
    assert address.valid is not None
    elapsed = int(time.time() - recorded_at) if recorded_at else 0
    valid = address.valid - elapsed
    if valid <= 0:
        return None
    return valid, max(0, min(valid, (address.preferred or 0) - elapsed))


def address_change(index: int, address: Address, recorded_at: float) -> Any | None:
    """The request that adds a recorded address back, keeping a lease's
    remaining lifetimes; None if the lease ran out."""
    attrs: list[tuple[str, Any]] = [("IFA_ADDRESS", address.address)]
    if address.family == AF_INET:
        attrs.append(("IFA_LOCAL", address.address))
    if address.label:
        attrs.append(("IFA_LABEL", address.label))
    if address.broadcast:
        attrs.append(("IFA_BROADCAST", address.broadcast))
    if address.valid is not None:
        lease = remaining(address, recorded_at)
        if lease is None:
            return None
        attrs.append(("IFA_CACHEINFO", {"ifa_valid": lease[0], "ifa_preferred": lease[1],
                                        "cstamp": 0, "tstamp": 0}))
    flags = address.flags & USER_ADDRESS_FLAGS
    attrs.append(("IFA_FLAGS", flags))  # all 32 bits; the header holds the low 8
    msg = ifaddrmsg()
    msg["family"], msg["prefixlen"], msg["index"] = address.family, address.prefixlen, index
    msg["flags"] = flags & 0xFF
    msg["attrs"] = attrs
    return msg


def route_change(route: Route, index: int) -> Any:
    msg = rtmsg()
    msg["family"], msg["dst_len"], msg["type"] = route.family, route.dst_len, route.type
    msg["proto"], msg["scope"] = route.protocol, route.scope
    msg["table"] = route.table if route.table < 256 else RT_TABLE_COMPAT
    attrs: list[tuple[str, Any]] = [("RTA_TABLE", route.table), ("RTA_OIF", index)]
    for nla, value in (("RTA_DST", route.dst), ("RTA_GATEWAY", route.gateway),
                       ("RTA_PRIORITY", route.priority), ("RTA_PREFSRC", route.prefsrc)):
        if value is not None:
            attrs.append((nla, value))
    msg["attrs"] = attrs
    return msg


def rename(index: int, name: str, up: bool = True) -> None:
    """Set the link down (unless it is already) and rename it, in one batch
    (if the rename fails, the link stays down: the caller restores it)."""
    batch = Batch()
    batch.rename("rename", index, name, up)
    failed = batch.send()
    if failed:
        raise HostError(f"could not rename interface {index} to {name}: "
                        f"{os.strerror(failed[0][1])}")


def _link_settings(index: int) -> tuple[Any, bytes | None]:
    found = rtnl.get_link_settings(index, _session())
    if found is None:
        raise HostError(f"interface {index} vanished from the host")
    return found


def restore(index: int, original: NicState) -> list[str]:
    """Put a returned NIC back as it was recorded; returns what was not possible.

    Each step stands on its own: a name taken by another link does not stop
    the rest. The order is the kernel's: the name and link settings (one
    batch), the sysctls (they govern what addresses do), then one batch of
    the addresses (in recorded order, so primaries stay primaries), the
    admin state, and the routes (the kernel takes a route only through a
    link that is up).
    """
    link, _ = _link_settings(index)
    links = Batch()
    if link.name != original.name:
        # (dockerd hands it back down; a kernel-returned one may differ)
        links.rename(f"name {original.name}", index, original.name, link.up)
    if link.mtu != original.mtu:
        links.add(f"mtu {original.mtu}", link_change(index, {"IFLA_MTU": original.mtu}),
                  RTM_SETLINK, SET)
    if original.mac and link.mac != original.mac:
        links.add(f"mac {original.mac}", link_change(index, {"IFLA_ADDRESS": original.mac}),
                  RTM_SETLINK, SET)
    settings = {nla: value for nla, value, now in (
        ("IFLA_TXQLEN", original.txqlen, link.txqlen), ("IFLA_GROUP", original.group, link.group),
        ("IFLA_IFALIAS", original.alias or "", link.alias or ""))
        if value is not None and value != now}
    if settings:  # "txqlen, group, ifalias"
        links.add(", ".join(nla[len("IFLA_"):].lower() for nla in settings),
                  link_change(index, settings), RTM_SETLINK, SET)
    for altname in original.altnames:
        if altname not in link.altnames:  # so "exists" means another link has it
            links.add(f"altname {altname}", altname_change(index, altname),
                      RTM_NEWLINKPROP, ADD)
    failed = links.send()
    # The link as it is now: its name (if the rename failed, the old one),
    # its admin state, and its settings (a new MTU resets ipv6/mtu, and from
    # under 1280 makes IPv6 anew).
    link, af_spec = _link_settings(index)
    problems = sentences(failed) + write_sysctls(link.name, original.sysctls, af_spec)
    rest = Batch()
    for address in original.addresses:
        if address.privacy:
            continue  # privacy addresses are the kernel's to make again
        msg = address_change(index, address, original.recorded_at)
        if msg is None:
            problems.append(f"address {address}: its lease ran out while the NIC was lent "
                            f"(the host's DHCP client will ask again)")
            continue
        rest.add(f"address {address}", msg, RTM_NEWADDR, ADD, present_is_fine=True)
    if original.up and not link.up:
        rest.add("admin state up", link_change(index, up=True), RTM_SETLINK, SET)
    for route in original.routes:
        rest.add(f"route {route}", route_change(route, index), RTM_NEWROUTE, ADD,
                 present_is_fine=True)
    if not original.up and link.up:
        rest.add("admin state down", link_change(index, up=False), RTM_SETLINK, SET)
    return problems + sentences(rest.send())


def write_sysctls(name: str, sysctls: tuple[tuple[str, str], ...],
                  af_spec: bytes | None = None) -> list[str]:
    """Write back the per-device sysctls that differ (a namespace move resets
    them all to the namespace's defaults); ``af_spec``: the link message's
    settings as they are now (a rename changes none of them; an MTU does)."""
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
