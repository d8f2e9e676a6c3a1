"""The one owner of hostnic's networks and claims.

The driver API (and the admin API) are thin views over this class. It does no
I/O of its own: the host namespace is reached through ``HostPort`` and the
disk through the store. All mutation happens on the reactor thread, and every
check-then-claim runs without an ``await`` in between, so claims are exclusive
under any concurrency.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Protocol

import attrs
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from hostnic.calls import CallLog
from hostnic.errors import HostnicError, NicUnavailable, PoolExhausted, UnknownObject
from hostnic.host import HostPort
from hostnic.linkwatch import LinkInfo
from hostnic.model import Claim, Network, Phase, State
from hostnic.protocol import CreateEndpoint, CreateNetwork, EndpointRef, Join


class Store(Protocol):
    async def save(self, snapshot: Callable[[], State],
                   on_failure: Callable[[], None]) -> None: ...


def short(object_id: str) -> str:
    return object_id[:12]


@attrs.define(eq=False)
class Core:
    host: HostPort
    store: Store
    state: State = attrs.field(factory=State)
    clock: Callable[[], float] = time.time
    journal: CallLog = attrs.field(factory=CallLog)
    last_reconciliation: dict[str, Any] | None = None
    _restoring: set[str] = attrs.field(factory=set)
    _serving: bool = False
    _waiters: list["Deferred[None]"] = attrs.field(factory=list)
    log = Logger()

    # -- lifecycle ---------------------------------------------------------

    async def start(self) -> None:
        """Reconcile recorded claims with the host, then serve."""
        self.host.on_link_appeared(self._link_appeared)
        try:
            await self.reconcile()
        finally:
            self._serving = True
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                waiter.callback(None)

    async def ready(self) -> None:
        """Requests that touch state wait for the start-up reconciliation."""
        if not self._serving:
            waiter: Deferred[None] = Deferred()
            self._waiters.append(waiter)
            await waiter

    # -- helpers -----------------------------------------------------------

    async def _commit(self, change: Callable[[State], State],
                      undo: Callable[[State], State]) -> None:
        """Apply ``change`` now and persist it; on a failed save apply ``undo``
        (before any other change can be persisted) and raise StoreError."""
        self.state = change(self.state)

        def rollback() -> None:
            self.state = undo(self.state)

        await self.store.save(lambda: self.state, rollback)

    def _label(self, mac: str) -> str:
        links = self.host.known_links(mac)
        return f"{mac} ({links[0].name})" if links else mac

    def _check_free_for_pool(self, network_id: str, macs: list[str]) -> None:
        for mac in macs:
            holder = self.state.network_of_mac(mac)
            if holder is not None and holder.id != network_id:
                raise NicUnavailable(
                    f"NIC {self._label(mac)} is already in hostnic network "
                    f"{short(holder.id)}; a NIC can serve one network only")
            claim = self.state.claim_of_mac(mac)
            if claim is not None:
                raise NicUnavailable(
                    f"NIC {self._label(mac)} is still held by endpoint "
                    f"{short(claim.endpoint_id)} ({claim.phase.value})")

    def _network(self, network_id: str) -> Network:
        network = self.state.networks.get(network_id)
        if network is None:
            raise UnknownObject(
                f"hostnic holds no network {short(network_id)}; recreate it with "
                f"docker network create -d hostnic")
        return network

    # -- networks ----------------------------------------------------------

    async def create_network(self, request: CreateNetwork) -> None:
        await self.ready()
        network_id = request.network_id
        if network_id in self.state.networks:
            raise HostnicError(f"hostnic already holds network {short(network_id)}")
        macs = list(request.macs)
        for name in request.names:
            link = await self.host.locate_name(name)
            if link is None:
                raise NicUnavailable(f"there is no interface {name} in the host network namespace")
            if link.mac is None:
                raise NicUnavailable(f"interface {name} has no Ethernet MAC address")
            macs.append(link.mac)
        macs = list(dict.fromkeys(macs))
        self._check_free_for_pool(network_id, macs)

        defaults = await self.host.default_route_links()
        for mac in macs:
            await self._check_lendable(mac, defaults)

        # Another request may have taken a NIC while we awaited the host.
        if network_id in self.state.networks:
            raise HostnicError(f"hostnic already holds network {short(network_id)}")
        self._check_free_for_pool(network_id, macs)
        network = Network(id=network_id, pool=tuple(macs), gateway4=request.gateway4,
                          gateway6=request.gateway6, subnets=request.subnets,
                          options=dict(request.options))
        await self._commit(lambda s: s.with_network(network),
                           lambda s: s.without_network(network_id))
        self.log.info("created network {network} with pool {pool}",
                      network=short(network_id), pool=[self._label(m) for m in macs])

    async def _check_lendable(self, mac: str, default_route_links: set[int]) -> None:
        known = self.host.known_links(mac)
        if len(known) > 1:
            raise NicUnavailable(
                f"MAC {mac} is carried by several interfaces "
                f"({', '.join(link.name for link in known)}); hostnic cannot tell "
                f"which one to hand out")
        link = await self.host.locate(mac)
        if link is None:
            raise NicUnavailable(f"there is no NIC with MAC {mac} in the host network namespace")
        if link.loopback:
            raise NicUnavailable(f"{link.name} is the loopback interface")
        if link.index in default_route_links:
            raise NicUnavailable(
                f"NIC {mac} ({link.name}) carries the host's default route; it looks "
                f"like the management NIC and handing it to a container would cut "
                f"the host off")
        if link.kind is not None:
            self.log.warn(
                "NIC {mac} ({name}) is a virtual {kind} link: if a container's "
                "namespace dies without dockerd, the kernel deletes it instead of "
                "giving it back", mac=mac, name=link.name, kind=link.kind)

    async def delete_network(self, network_id: str) -> None:
        await self.ready()
        network = self.state.networks.get(network_id)
        if network is None:
            self.log.info("delete of unknown network {network}: nothing to do",
                          network=short(network_id))
            return
        await self._commit(lambda s: s.without_network(network_id),
                           lambda s: s.with_network(network))
        self.log.info("deleted network {network}", network=short(network_id))

    # -- endpoints ---------------------------------------------------------

    async def create_endpoint(self, request: CreateEndpoint) -> dict[str, str]:
        """Claim a NIC; returns the Interface fields dockerd left empty."""
        await self.ready()
        ref = request.ref
        network = self._network(ref.network_id)
        existing = self.state.claims.get(ref.endpoint_id)
        if existing is not None:
            if existing.network_id != ref.network_id:
                raise HostnicError(f"endpoint {short(ref.endpoint_id)} already exists "
                                   f"in another network")
            mac = existing.mac  # a retried request: same answer
        else:
            mac = self._choose_nic(network, request.pinned_mac)
            claim = Claim(endpoint_id=ref.endpoint_id, network_id=network.id, mac=mac,
                          created_at=self.clock())
            await self._commit(lambda s: s.with_claim(claim),
                               lambda s: s.without_claim(claim.endpoint_id))
            self.log.info("endpoint {endpoint} of network {network} claimed NIC {nic}",
                          endpoint=short(ref.endpoint_id), network=short(network.id),
                          nic=self._label(mac))
        return {} if request.interface_has_mac else {"MacAddress": mac}

    def _choose_nic(self, network: Network, pinned: str | None) -> str:
        claimed = {c.mac: c for c in self.state.claims.values()}
        if pinned is not None:
            if pinned not in network.pool:
                raise NicUnavailable(
                    f"NIC {pinned} is not in the pool of network {short(network.id)} "
                    f"({', '.join(network.pool)})")
            if pinned in claimed:
                raise NicUnavailable(
                    f"NIC {self._label(pinned)} of network {short(network.id)} is in use "
                    f"by endpoint {short(claimed[pinned].endpoint_id)}")
            return pinned
        free = [mac for mac in network.pool if mac not in claimed]
        if not free:
            count = len(network.pool)
            raise PoolExhausted(
                f"network {short(network.id)} has {count} NIC{'s' if count > 1 else ''}, "
                f"all in use; add NICs to its pool or stop a container")
        present = [mac for mac in free if self.host.known_links(mac)]
        if not present:
            raise NicUnavailable(
                f"the free NICs of network {short(network.id)} ({', '.join(free)}) are "
                f"not in the host network namespace")
        return present[0]

    async def join(self, request: Join) -> dict[str, Any]:
        await self.ready()
        ref = request.ref
        network = self._network(ref.network_id)
        claim = self.state.claims.get(ref.endpoint_id)
        if claim is None or claim.network_id != ref.network_id:
            raise UnknownObject(f"hostnic holds no endpoint {short(ref.endpoint_id)} "
                                f"in network {short(ref.network_id)}")
        if claim.phase is Phase.CREATED:
            await self._lend(claim, request.sandbox_key)
        answer: dict[str, Any] = {
            "InterfaceName": {"SrcName": claim.transit_name, "DstPrefix": "eth"},
            # Without this dockerd adds a NAT'd second NIC: a path around the tenant NIC.
            "DisableGatewayService": True,
        }
        if network.gateway4:
            answer["Gateway"] = network.gateway4
        if network.gateway6:
            answer["GatewayIPv6"] = network.gateway6
        return answer

    async def _lend(self, claim: Claim, sandbox_key: str | None) -> None:
        link = await self.host.locate(claim.mac)
        if link is None:
            raise NicUnavailable(
                f"NIC {claim.mac} of network {short(claim.network_id)} is not in the "
                f"host network namespace (is it inside another container?)")
        original = await self.host.read_state(link.index)
        joined = attrs.evolve(claim, phase=Phase.JOINED, original=original,
                              sandbox_key=sandbox_key, joined_at=self.clock())
        # Durable before the NIC is touched: a crash from here on can restore it.
        await self._commit(lambda s: s.with_claim(joined), lambda s: s.with_claim(claim))
        try:
            await self.host.rename(link.index, claim.transit_name)
        except HostnicError:
            await self._commit(lambda s: s.with_claim(claim), lambda s: s.with_claim(joined))
            raise
        self.log.info("endpoint {endpoint} joins with NIC {nic} lent as {transit}; recorded "
                      "{state}", endpoint=short(claim.endpoint_id), nic=claim.mac,
                      transit=claim.transit_name, state=original)

    async def leave(self, ref: EndpointRef) -> None:
        await self.ready()
        claim = self.state.claims.get(ref.endpoint_id)
        if claim is None or claim.phase is not Phase.JOINED:
            return
        left = attrs.evolve(claim, phase=Phase.LEFT)
        await self._commit(lambda s: s.with_claim(left), lambda s: s.with_claim(claim))

    async def delete_endpoint(self, ref: EndpointRef) -> None:
        await self.ready()
        claim = self.state.claims.get(ref.endpoint_id)
        if claim is None:
            self.log.info("delete of unknown endpoint {endpoint}: nothing to do",
                          endpoint=short(ref.endpoint_id))
            return
        if claim.original is None:
            await self._release(claim)
            return
        if not await self._give_back(claim):
            releasing = attrs.evolve(claim, phase=Phase.RELEASING)
            await self._commit(lambda s: s.with_claim(releasing),
                               lambda s: s.with_claim(claim))
            self.log.warn("NIC {nic} of endpoint {endpoint} is not back in the host "
                          "namespace; it will be restored when it appears",
                          nic=claim.mac, endpoint=short(claim.endpoint_id))

    def endpoint_info(self, ref: EndpointRef) -> dict[str, Any]:
        claim = self.state.claims.get(ref.endpoint_id)
        if claim is None:
            return {}
        return {"hostnic_mac": claim.mac, "phase": claim.phase.value,
                "host_name": claim.original.name if claim.original else None}

    async def _release(self, claim: Claim) -> None:
        await self._commit(lambda s: s.without_claim(claim.endpoint_id),
                           lambda s: s.with_claim(claim))
        self.log.info("endpoint {endpoint} released NIC {nic}",
                      endpoint=short(claim.endpoint_id), nic=claim.mac)

    async def _give_back(self, claim: Claim) -> bool:
        """Restore the NIC to its recorded state and drop the claim; False if the
        NIC is not in the host namespace."""
        assert claim.original is not None
        if claim.mac in self._restoring:
            return True  # another path is restoring it right now
        self._restoring.add(claim.mac)
        try:
            outcome = await self.host.restore(claim.mac, claim.original, claim.transit_name)
        finally:
            self._restoring.discard(claim.mac)
        if not outcome.found:
            return False
        if outcome.problems:
            self.log.warn("NIC {nic} restored with problems: {problems}",
                          nic=claim.mac, problems="; ".join(outcome.problems))
        else:
            self.log.info("NIC {nic} restored from {name} to {state}",
                          nic=claim.mac, name=outcome.name, state=claim.original)
        current = self.state.claims.get(claim.endpoint_id)
        if current is not None:
            await self._release(current)
        return True

    async def release(self, mac: str) -> dict[str, Any]:
        """An operator hands back a NIC whose claim outlived its container."""
        await self.ready()
        claim = self.state.claim_of_mac(mac)
        if claim is None:
            raise UnknownObject(f"NIC {mac} is not claimed by any hostnic endpoint")
        link = await self.host.locate(mac)
        if link is None:
            if claim.sandbox_key and await self.host.namespace_exists(claim.sandbox_key):
                raise NicUnavailable(
                    f"NIC {mac} is inside the live namespace {claim.sandbox_key} of "
                    f"endpoint {short(claim.endpoint_id)}; stop or disconnect that "
                    f"container instead")
            await self._release(claim)
            self.journal.note("release", mac=mac, endpoint=claim.endpoint_id, found=False)
            return {"mac": mac, "endpoint": claim.endpoint_id, "found": False,
                    "restored": False, "problems": []}
        problems: tuple[str, ...] = ()
        if claim.original is not None:
            outcome = await self.host.restore(mac, claim.original, claim.transit_name)
            problems = outcome.problems
        current = self.state.claims.get(claim.endpoint_id)
        if current is not None:
            await self._release(current)
        self.journal.note("release", mac=mac, endpoint=claim.endpoint_id, found=True)
        self.log.info("operator released NIC {nic} from endpoint {endpoint}",
                      nic=mac, endpoint=short(claim.endpoint_id))
        return {"mac": mac, "endpoint": claim.endpoint_id, "found": True,
                "restored": claim.original is not None, "problems": list(problems)}

    # -- reconciliation ----------------------------------------------------

    async def reconcile(self) -> dict[str, Any]:
        """Match recorded claims against the host namespace by MAC.

        - a claim dockerd deleted while the NIC was away (releasing), or one
          that dockerd left but whose DeleteEndpoint never reached us: the NIC
          is home, so restore it and drop the claim;
        - a joined claim whose NIC is home under a foreign name (the kernel
          hands a physical NIC back as ``eth0`` or ``dev<N>`` when a container's
          namespace dies without dockerd): restore it, keep the claim until
          dockerd deletes the endpoint.
        """
        started = self.clock()
        restored: list[str] = []
        released: list[str] = []
        absent: list[str] = []
        for claim in list(self.state.claims.values()):
            if claim.original is None:
                continue
            try:
                link = await self.host.locate(claim.mac)
                if link is None:
                    absent.append(claim.mac)
                    continue
                home_from_transit = link.name == claim.transit_name
                if claim.phase in (Phase.RELEASING, Phase.LEFT) and (
                        claim.phase is Phase.RELEASING or home_from_transit):
                    if await self._give_back(claim):
                        released.append(claim.mac)
                elif claim.phase is Phase.JOINED and not home_from_transit:
                    outcome = await self.host.restore(claim.mac, claim.original,
                                                      claim.transit_name)
                    if outcome.found:
                        restored.append(claim.mac)
                        self.log.info("reconciled NIC {nic}: found as {name}, restored "
                                      "to {state}", nic=claim.mac, name=link.name,
                                      state=claim.original)
            except HostnicError as e:
                self.log.error("reconciling NIC {nic} failed: {error}",
                               nic=claim.mac, error=e.message)
        report = {"at": self.clock(), "restored": restored, "released": released,
                  "absent": absent, "claims": len(self.state.claims),
                  "seconds": round(self.clock() - started, 6)}
        self.last_reconciliation = report
        self.journal.note("reconciliation", **report)
        self.log.info("reconciliation: {restored} restored, {released} released, "
                      "{absent} not in the host namespace", restored=len(restored),
                      released=len(released), absent=len(absent))
        return report

    def _link_appeared(self, link: LinkInfo) -> None:
        if link.mac is None:
            return
        claim = self.state.claim_of_mac(link.mac)
        if claim is None or claim.phase is not Phase.RELEASING or link.mac in self._restoring:
            return
        self.log.info("NIC {nic} came back as {name}; restoring it",
                      nic=link.mac, name=link.name)

        async def finish() -> None:
            try:
                await self._give_back(claim)
            except HostnicError as e:
                self.log.error("restoring NIC {nic} failed: {error}",
                               nic=link.mac, error=e.message)

        Deferred.fromCoroutine(finish())
