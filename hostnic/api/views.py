"""What the admin API shows: plain dicts built from the core's state and the
host's live inventory. Pure functions, no I/O."""

from __future__ import annotations

from typing import Any, Mapping

from hostnic.state.model import (Address, Adopted, Claim, LinkInfo, Network, NicRef, NicState,
                                 Phase, State)


def address_list(addresses: list[Address] | tuple[Address, ...]) -> list[str]:
    return [str(a) for a in addresses]


def nic_state(state: NicState | None) -> dict[str, Any] | None:
    """What was recorded of a NIC, all of it."""
    if state is None:
        return None
    return {"name": state.name, "mac": state.mac, "mtu": state.mtu,
            "admin": "up" if state.up else "down", "addresses": address_list(state.addresses),
            "routes": [str(r) for r in state.routes], "sysctls": dict(state.sysctls),
            "alias": state.alias, "altnames": list(state.altnames), "txqlen": state.txqlen,
            "group": state.group, "recorded_at": state.recorded_at}


def adopted_view(adopted: Adopted | None) -> dict[str, Any] | None:
    """The configuration adopt mode hands a container from a NIC."""
    if adopted is None:
        return None
    return {"address4": str(adopted.address4) if adopted.address4 else None,
            "address6": str(adopted.address6) if adopted.address6 else None,
            "gateway4": adopted.gateway4, "gateway6": adopted.gateway6,
            "routes": [str(r) for r in adopted.routes],
            "not_carried": address_list(adopted.not_carried), "read_at": adopted.read_at}


def claim_view(claim: Claim, present: bool,
               restores: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Any]:
    restore = (restores or {}).get(claim.mac)
    attachment = claim.attachment
    return {"owner": "cni" if attachment else "docker",
            # A CNI attachment's names (its endpoint id is made from them).
            "cni": {"network": attachment.network, "container_id": attachment.container_id,
                    "ifname": attachment.ifname} if attachment else None,
            "endpoint": claim.endpoint_id, "network": claim.network_id, "mac": claim.mac,
            "perm_mac": claim.nic.perm, "pci": claim.nic.pci, "transit_name": claim.transit_name,
            "phase": claim.phase.value, "created_at": claim.created_at,
            "joined_at": claim.joined_at, "sandbox_key": claim.sandbox_key,
            "nic_in_host": present, "original": nic_state(claim.original),
            "adopted": adopted_view(claim.adopted),
            # A restore of this endpoint's NIC that left the claim in place
            # (found home under a foreign name, say), with what it could not do.
            "last_restore": restore if restore and restore["endpoint"] == claim.endpoint_id
            else None}


def network_view(network: Network, state: State, names: dict[str, str]) -> dict[str, Any]:
    users = {c.nic.key: c.endpoint_id for c in state.claims.values()}
    return {"id": network.id, "gateway4": network.gateway4, "gateway6": network.gateway6,
            "subnets": list(network.subnets), "options": dict(network.options),
            "mode": "adopt" if network.adopt else "ipam", "ipv6": network.ipv6,
            "pool": [{"mac": nic.mac, "perm_mac": nic.perm, "pci": nic.pci,
                      "name": names.get(nic.mac),
                      "endpoint": users.get(nic.key),
                      "adopted": adopted_view(network.adopted.get(nic.mac))}
                     for nic in network.pool]}


def nic_status(nic: NicRef, present: bool, state: State, management: bool,
               loopback: bool = False) -> str:
    claim = state.claim_of(nic)
    if claim is not None:
        if present:
            return "claimed"
        return "missing" if claim.phase is Phase.RELEASING or claim.original is None \
            else "in-container"
    if state.network_of(nic) is not None:
        return "in-pool" if present else "missing"
    if loopback:
        return "loopback"
    return "management" if management else "free"


def _kept(nic: NicRef, network: Network | None, claim: Claim | None,
          restores: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """What hostnic holds of a NIC besides the kernel's view."""
    key = (network.entry(nic) or nic).mac if network is not None else nic.mac
    return {"recorded": nic_state(claim.original) if claim else None,
            "adopted": adopted_view(network.adopted.get(key)) if network else None,
            "last_restore": restores.get(key)}


def nic_views(links: list[LinkInfo], addresses: Mapping[int, list[Address]],
              pci: Mapping[str, str | None], management: set[int], state: State,
              restores: Mapping[str, Mapping[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Every NIC of the host namespace, then every known NIC that is elsewhere."""
    views: list[dict[str, Any]] = []
    seen: set[str] = set()
    for link in links:
        if link.mac is None:
            continue
        # A lent NIC is known by its transit name too (its MAC may have changed).
        claim = state.claim_of_link(link.mac, link.perm, link.name, link.pci)
        nic = claim.nic if claim is not None else NicRef(link.mac, link.perm, link.pci)
        network = state.network_of(nic)
        seen.add((network.entry(nic) or nic).mac if network is not None else nic.mac)
        views.append({
            "name": link.name, "mac": link.mac, "perm_mac": link.perm, "index": link.index,
            "kind": "virtual" if link.kind else "physical", "driver": link.kind,
            "pci": link.pci or pci.get(link.name), "mtu": link.mtu,
            "admin": "up" if link.up else "down", "oper": "up" if link.carrier else "down",
            "addresses": address_list(addresses.get(link.index, [])),
            "status": nic_status(nic, True, state, link.index in management, link.loopback),
            "management": link.index in management,
            "network": network.id if network else None,
            "endpoint": claim.endpoint_id if claim else None, "where": "host",
            **_kept(nic, network, claim, restores or {})})
    elsewhere = [*(c.nic for c in state.claims.values()),
                 *(nic for n in state.networks.values() for nic in n.pool)]
    for nic in dict.fromkeys(elsewhere):
        if nic.mac in seen:
            continue
        seen.add(nic.mac)
        claim = state.claim_of(nic)
        network = state.network_of(nic)
        original = claim.original if claim else None
        views.append({
            "name": original.name if original else None, "mac": nic.mac,
            "perm_mac": nic.perm, "index": None,
            "kind": None, "driver": None, "pci": nic.pci,
            "mtu": original.mtu if original else None, "admin": None, "oper": None,
            "addresses": [], "status": nic_status(nic, False, state, False),
            "management": False, "network": network.id if network else None,
            "endpoint": claim.endpoint_id if claim else None,
            "where": (claim.sandbox_key or "container") if claim and claim.original else None,
            "original": nic_state(original), **_kept(nic, network, claim, restores or {})})
    return views
