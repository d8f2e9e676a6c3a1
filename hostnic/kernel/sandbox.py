"""A network namespace handed to hostnic, and the changes hostnic makes in it.

Whoever may enter a namespace (the CNI shim, which the runtime runs as root)
hands hostnic two descriptors: the namespace itself and a netlink socket made
inside it (``hostnic.cnishim.hand_over``). With these, hostnic moves a NIC in
(and renames it there), configures it there, reads it there and brings it home, with
CAP_NET_ADMIN alone: it never enters the namespace (``setns`` needs
CAP_SYS_ADMIN, which the daemon does not have and the Docker path never
needed). Requests on the handed socket act in its namespace; the move itself
is a request in the host namespace naming the target by its descriptor.

All functions block: they run in hostnic's netlink thread, whose own socket
(``changes``) is the host namespace's.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
from typing import Sequence

import attrs

from hostnic.errors import HostError
from hostnic.kernel import changes, rtnl
from hostnic.kernel.record import restorable
from hostnic.kernel.changes import ADD, RTM_SETLINK, SET, Batch, link_change, route_change
from hostnic.kernel.rtnl import NETLINK_ROUTE, RTM_NEWADDR, RTM_NEWROUTE
from hostnic.state.model import Address, Inside, LinkInfo, NicRef, Route, proven

CLONE_NEWNET = 0x40000000


NS_GET_NSTYPE = 0xB703  # ioctl: the kind of namespace a descriptor is


def open_handed(key: str, fds: Sequence[int]) -> "Sandbox":
    """The namespace the CNI shim handed over: ``fds`` are the namespace and a
    netlink socket made inside it. They are hostnic's from here: each is
    closed once if they are not that. HostError, a sentence, if not."""
    fds = list(fds)
    if len(fds) != 2:
        _close_all(fds)
        raise HostError(f"the namespace {key} was handed over as {len(fds)} descriptors, "
                        f"not 2 (the namespace and a netlink socket made in it)")
    netns, sock_fd = fds
    try:
        if _namespace_kind(netns) != CLONE_NEWNET:
            raise HostError(f"what was handed over for {key} is not a network namespace")
        try:
            sock = socket.socket(fileno=sock_fd)
        except OSError:
            raise HostError(f"what was handed over for {key} is not a socket") from None
    except BaseException:
        _close_all(fds)
        raise
    try:  # (the socket object owns its descriptor from here)
        if sock.family != socket.AF_NETLINK or sock.proto != NETLINK_ROUTE:
            raise HostError(f"what was handed over for {key} is not a netlink socket")
        if _namespace_of(sock) != _inode(netns):
            # Its requests would act in one namespace and the moves in another.
            raise HostError(f"the netlink socket handed over for {key} was not made in it")
    except BaseException:
        sock.close()
        _close_all([netns])
        raise
    try:
        session = rtnl.Session(sock)  # (closes the socket if it fails)
    except OSError as e:
        _close_all([netns])
        raise HostError(f"the netlink socket handed over for {key}: {e.strerror or e}") from None
    return Sandbox(key, netns, session)


SIOCGSKNS = 0x894C  # ioctl: a descriptor of the namespace a socket was made in


def _namespace_kind(fd: int) -> int | None:
    try:
        return fcntl.ioctl(fd, NS_GET_NSTYPE)
    except OSError:
        return None


def _inode(fd: int) -> tuple[int, int]:
    info = os.fstat(fd)
    return info.st_dev, info.st_ino


def _namespace_of(sock: socket.socket) -> tuple[int, int] | None:
    try:
        ns = fcntl.ioctl(sock.fileno(), SIOCGSKNS)
    except OSError:
        return None
    try:
        return _inode(ns)
    finally:
        os.close(ns)


def _close_all(fds: Sequence[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


@attrs.define(eq=False)
class Sandbox:
    """A namespace handed over: ``key`` is the path it was named by (what a
    claim records), ``netns`` its descriptor, ``session`` requests made in it.
    The descriptors are hostnic's to close (``close``)."""

    key: str
    netns: int
    session: rtnl.Session

    @classmethod
    def handed(cls, key: str, netns: int, sock: socket.socket) -> "Sandbox":
        """Without open_handed's checks (the caller made them itself)."""
        return cls(key, netns, rtnl.Session(sock))

    def close(self) -> None:
        self.session.close()
        os.close(self.netns)


def move_in(index: int, sandbox: Sandbox, name: str) -> LinkInfo:
    """Move host link ``index`` into the sandbox and rename it ``name`` there;
    the link as it is there. A name taken there is refused before the link
    moves; if the rename fails after the move, the link is moved home again.

    Two requests, not one: given a move and a name at once, the kernel moves
    the link, keeping its name unless that name is taken there, and only
    then renames it, so a failed rename would leave it moved (the link
    arrives down: a move closes it, and a down link can be renamed)."""
    if rtnl.get_link(name=name, on=sandbox.session) is not None:
        raise HostError(f"an interface named {name} exists in {sandbox.key} already")
    link = rtnl.get_link(index)
    if link is None:
        raise HostError(f"interface {index} vanished from the host")
    _move(f"moving interface {link.name} into {sandbox.key}", index, sandbox.netns, None)
    there = rtnl.get_link(name=link.name, on=sandbox.session)
    if there is None:
        raise HostError(f"interface {link.name} vanished on its way into {sandbox.key}")
    batch = Batch()
    batch.add(f"renaming {link.name} to {name} in {sandbox.key}",
              link_change(there.index, {"IFLA_IFNAME": name}), RTM_SETLINK, SET)
    failed = batch.send(sandbox.session)
    if failed:
        _home(sandbox, there.index, link.name)  # (raises if it cannot)
        _raise_first(failed, "the NIC is home again")
    moved = rtnl.get_link(name=name, on=sandbox.session)
    if moved is None:
        raise HostError(f"interface {name} vanished in {sandbox.key}")
    return moved


def configure(sandbox: Sandbox, index: int, mtu: int | None,
              addresses: tuple[Address, ...], routes: tuple[Route, ...]) -> None:
    """Give link ``index`` of the sandbox its MTU, addresses, admin state up
    and routes, in the kernel's order (a route needs its link up); HostError
    naming the first step that failed (the caller takes the NIC home)."""
    batch = Batch()
    if mtu is not None:
        batch.add(f"mtu {mtu}", link_change(index, {"IFLA_MTU": mtu}), RTM_SETLINK, SET)
    for address in addresses:
        msg = changes.address_change(index, address, 0.0)
        assert msg is not None  # (no lease: recorded_at 0 keeps its lifetimes)
        batch.add(f"address {address}", msg, RTM_NEWADDR, ADD)
    batch.add("admin state up", link_change(index, up=True), RTM_SETLINK, SET)
    for route in routes:
        batch.add(f"route {route}", route_change(route, index), RTM_NEWROUTE, ADD)
    _raise_first(batch.send(sandbox.session), f"configuring interface {index} in {sandbox.key}")


def look(sandbox: Sandbox, name: str) -> Inside | None:
    """Link ``name`` inside the sandbox with its addresses and routes, or None."""
    link = rtnl.get_link(name=name, on=sandbox.session)
    if link is None:
        return None
    routes = tuple(info.route for info in rtnl.routes_via(link.index, sandbox.session)
                   if restorable(info))  # not the kernel's own
    return Inside(link, rtnl.addresses_of(link.index, sandbox.session), routes)


def bring_home(sandbox: Sandbox, nic: NicRef, name: str, home_name: str,
               lent_index: int | None) -> LinkInfo | None:
    """Move the NIC out of the sandbox into this thread's namespace as
    ``home_name``; the link as it is home, or None if the NIC is not in the
    sandbox. It is looked for under ``name`` and, if something else wears
    that name or the container renamed it, among every link there: only a
    link that proves to be the NIC (``NicRef.is_link``) is taken."""
    named = rtnl.get_link(name=name, on=sandbox.session)
    candidates = [named] if named is not None else []
    link = proven(nic, candidates, lent_index)
    if link is None:
        link = proven(nic, [l for l in rtnl.dump_links(sandbox.session)
                            if nic.matches(l.mac, l.perm, l.pci)], lent_index)
    if link is None:
        return None
    # Renamed there first, then moved: the move keeps the name, and a name
    # taken at home stops it before the NIC leaves. If it is stopped, the
    # NIC gets its name there back (down: a rename needs it down).
    batch = Batch()
    batch.rename(f"renaming {link.name} to {home_name} in {sandbox.key}", link.index,
                 home_name, link.up)
    _raise_first(batch.send(sandbox.session), f"bringing NIC {nic.mac} home")
    try:
        _home(sandbox, link.index, home_name)
    except HostError:
        back_there = Batch()
        back_there.add(f"renaming {home_name} back to {link.name}",
                       link_change(link.index, {"IFLA_IFNAME": link.name}), RTM_SETLINK, SET)
        back_there.send(sandbox.session)  # (best effort: a retry finds it by identity)
        raise
    back = rtnl.get_link(name=home_name)
    if back is None:
        raise HostError(f"interface {home_name} vanished on its way home from {sandbox.key}")
    return back


def _move(what: str, index: int, netns: int, on: rtnl.Session | None) -> None:
    """One request, sent in the namespace the link is in: move it to the
    namespace ``netns`` under its name (refused, and nothing moved, if that
    name is taken there)."""
    batch = Batch()
    batch.add(what, link_change(index, {"IFLA_NET_NS_FD": netns}), RTM_SETLINK, SET)
    failed = batch.send(on)
    if failed:
        code = failed[0][1]
        reason = ("an interface of that name is there" if code == errno.EEXIST
                  else os.strerror(code))
        raise HostError(f"{what}: {reason}")


def _home(sandbox: Sandbox, index: int, name: str) -> None:
    """Move link ``index`` of the sandbox, named ``name``, to this thread's
    namespace."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _move(f"moving {name} home from {sandbox.key}", index, home, sandbox.session)
    finally:
        os.close(home)


def _raise_first(failed: list[tuple[str, int]], context: str) -> None:
    if failed:
        what, code = failed[0]
        raise HostError(f"{context}: {what}: {os.strerror(code)}")
