"""Pool policy: which NIC a network may take and which one an endpoint gets.
Pure functions over the state; the messages are the sentences users read."""

from __future__ import annotations

from typing import Callable, Mapping

from hostnic.core.commands import DefineNetwork
from hostnic.errors import NicUnavailable, PoolExhausted
from hostnic.sentences import quoted, short
from hostnic.state.model import Network, NicRef, State

Label = Callable[[NicRef], str]


def check_free(state: State, network_id: str, nics: list[NicRef], label: Label) -> None:
    """Refuse a NIC that another network pools or an endpoint still holds
    (matched by MAC or by permanent address: a changed MAC is the same NIC)."""
    for nic in nics:
        holder = state.network_of(nic)
        if holder is not None and holder.id != network_id:
            raise NicUnavailable(
                f"NIC {label(nic)} is already in hostnic network {short(holder.id)}; "
                f"a NIC can serve one network only")
        claim = state.claim_of(nic)
        if claim is not None:
            raise NicUnavailable(
                f"NIC {label(nic)} is still held by {claim.holder} ({claim.phase.value})")


def choose(state: State, network: Network, pinned: str | None,
           present: Callable[[NicRef], bool], label: Label,
           pinned_pci: str | None = None) -> NicRef:
    """The pool NIC for a new endpoint: the pinned one (by MAC or by PCI
    address), else the first free one that is in the host namespace."""
    claimed = {c.nic.key: c for c in state.claims.values()}
    if pinned is not None or pinned_pci is not None:
        by_mac = network.entry(NicRef(pinned)) if pinned is not None else None
        by_pci = network.entry(NicRef("", pci=pinned_pci)) if pinned_pci is not None else None
        if pinned is not None and pinned_pci is not None and by_mac != by_pci:
            raise NicUnavailable(f"MAC {pinned} and PCI address {pinned_pci} name different "
                                 f"NICs; pin one")
        entry = by_mac or by_pci
        if entry is None:
            what = f"NIC {pinned}" if pinned else f"the NIC at PCI address {pinned_pci}"
            raise NicUnavailable(
                f"{what} is not in the pool of network {short(network.id)} "
                f"({', '.join(map(describe, network.pool))})"
                + ("; a virtual NIC has no PCI address: pin it by its MAC"
                   if pinned_pci and not any(n.pci for n in network.pool) else ""))
        if entry.key in claimed:
            raise NicUnavailable(
                f"NIC {label(entry)} of network {short(network.id)} is in use "
                f"by {claimed[entry.key].holder}")
        return entry
    free = [nic for nic in network.pool if nic.key not in claimed]
    if not free:
        count = len(network.pool)
        holders = "; ".join(f"{label(nic)} by {claimed[nic.key].holder}"
                            for nic in network.pool[:3])
        raise PoolExhausted(
            f"network {short(network.id)} has {count} NIC{'s' if count > 1 else ''}, "
            f"all in use ({holders}{'; ...' if count > 3 else ''}); add NICs to its pool "
            f"or stop a container")
    home = [nic for nic in free if present(nic)]
    if not home:
        raise NicUnavailable(
            f"the free NICs of network {short(network.id)} "
            f"({', '.join(nic.mac for nic in free)}) are not in the host network namespace")
    return home[0]


def describe(nic: NicRef) -> str:
    """A pool entry as a user names it: its MAC, and its PCI address if any."""
    return f"{nic.mac} at {nic.pci}" if nic.pci else nic.mac


def difference(held: Network, request: DefineNetwork) -> str | None:
    """What a CreateNetwork for a held network id asks differently (None: it is
    the same request again, as dockerd retries it after a lost answer)."""
    differences = []
    if dict(held.options) != dict(request.options):
        differences.append(f"options {_options(request.options)} "
                           f"(held: {_options(held.options)})")
    for what, asked, had in (("IPv4 gateway", request.gateway4, held.gateway4),
                             ("IPv6 gateway", request.gateway6, held.gateway6)):
        if asked != had:
            differences.append(f"{what} {asked or 'none'} (held: {had or 'none'})")
    if request.adopt != held.adopt:
        differences.append("adopt mode (--ipam-driver null) "
                           + ("asked" if request.adopt else "not asked")
                           + f" (held: {'adopt' if held.adopt else 'Docker IPAM'})")
    if request.ipv6 != held.ipv6:
        differences.append(f"IPv6 {'on' if request.ipv6 else 'off'} "
                           f"(held: {'on' if held.ipv6 else 'off'})")
    if tuple(request.subnets) != tuple(held.subnets):
        differences.append(f"subnets {', '.join(request.subnets) or 'none'} "
                           f"(held: {', '.join(held.subnets) or 'none'})")
    return "; ".join(differences) or None


def _options(options: Mapping[str, str]) -> str:
    return ", ".join(f"{key}={quoted(value)}" for key, value in sorted(options.items())) \
        or "none"
