"""The one owner of hostnic's networks and claims.

The driver API and the admin API are thin views over this class; it speaks
neither wire format. It does no I/O of its own: the host is reached through
``HostPort`` and the disk through the ledger's store.

Concurrency: a change is applied in memory before its save is awaited (see
``ledger``), so a check and the claim it allows never have an ``await``
between them. Calls on one object are serialised by a lock per network, per
endpoint and per NIC (endpoint before NIC, the only order taken), so a retry
or a racing call waits for the first to be durable and then sees its result.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import attrs
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from hostnic.core import guards, pools
from hostnic.core.attachments import Attachments
from hostnic.core.commands import (AttachNic, Attached, CheckAttachment, ClaimNic, Claimed,
                                   CollectAttachments, DefineNetwork, DetachNic, EndpointKey,
                                   LendNic, Lent, NicChoice)
from hostnic.core.crashpoints import crashpoint
from hostnic.core.events import EventLog
from hostnic.core.guards import refusal
from hostnic.core.lending import Lender, Released
from hostnic.core.locks import KeyedLocks
from hostnic.core.narration import narrate, untold
from hostnic.core.ports import HostPort, Sandbox
from hostnic.core.readmodel import CoreView, HostView
from hostnic.core.retry import Retrier
from hostnic.errors import HostnicError, NicUnavailable, UnknownObject
from hostnic.sentences import short
from hostnic.state.ledger import Ledger, Store
from hostnic.state.model import (Adopted, Attachment, Claim, LinkInfo, Network, NicRef, Phase,
                                 State, transit_name)


def _differs(before: Adopted | None, after: Adopted) -> bool:
    """Whether a NIC's configuration changed (not counting when it was read)."""
    return before is None or attrs.evolve(before, read_at=0.0) != attrs.evolve(after,
                                                                             read_at=0.0)


@attrs.define(eq=False)
class Core:
    host: HostPort
    store: Store
    initial: State = attrs.field(factory=State, alias="state")
    clock: Callable[[], float] = time.time
    reactor: Any = None  # IReactorTime for retries; None: no background retries
    events: EventLog = attrs.field(factory=EventLog)
    last_reconciliation: dict[str, Any] | None = None
    ledger: Ledger = attrs.field(init=False)
    lender: Lender = attrs.field(init=False)
    attachments: Attachments = attrs.field(init=False)
    locks: KeyedLocks = attrs.field(factory=KeyedLocks, init=False)
    retries: Retrier = attrs.field(init=False)
    _settling: set[str] = attrs.field(factory=set, init=False)
    _serving: bool = attrs.field(default=False, init=False)
    _waiters: list["Deferred[None]"] = attrs.field(factory=list, init=False)
    log = Logger()

    def __attrs_post_init__(self) -> None:
        self.ledger = Ledger(self.store, self.initial)
        self.lender = Lender(self.host, self.ledger, self.events, self.clock)
        self.attachments = Attachments(self)
        self.retries = Retrier(self.reactor)

    @property
    def state(self) -> State:
        """The live state (the ledger's)."""
        return self.ledger.state

    def view(self) -> CoreView:
        """What the core shows (the admin API's read model)."""
        return CoreView(self.state, dict(self.lender.restores), self.last_reconciliation)

    @property
    def host_view(self) -> HostView:
        return HostView(self.host)

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

    def label(self, nic: NicRef) -> str:
        links = self.host.known(nic)
        return f"{nic.mac} ({links[0].name})" if links else nic.mac

    def _network(self, network_id: str) -> Network:
        network = self.state.networks.get(network_id)
        if network is None:
            raise UnknownObject(
                f"hostnic holds no network {short(network_id)}; recreate it with "
                f"docker network create -d hostnic")
        return network

    # -- networks ----------------------------------------------------------

    async def define_network(self, request: DefineNetwork) -> None:
        await self.ready()
        network_id = request.network_id
        async with self.locks.hold("net:" + network_id):
            held = self.state.networks.get(network_id)
            if held is not None:
                # dockerd retries a create whose answer was lost: same answer.
                difference = pools.difference(held, request)
                if difference is None:
                    narrate(f"network {short(network_id)} created again with the same "
                            f"settings: nothing to do")
                    return
                raise HostnicError(f"hostnic already holds network {short(network_id)} "
                                   f"with other settings: {difference}")
            # What the request names by MAC is checked before the host is asked:
            # "held by endpoint X" says more than "not in the host namespace".
            pools.check_free(self.state, network_id, [NicRef(m) for m in request.macs],
                             self.label)
            found = await self.resolve_pool(request)
            nics = [nic for nic, _ in found]
            pools.check_free(self.state, network_id, nics, self.label)
            adopted = {}
            if request.adopt:  # each NIC brings its own configuration
                for nic, link in found:
                    adopted[nic.mac] = await self.host.adopt(link.index)
                    self._warn_adopted(nic, adopted[nic.mac])
                pools.check_free(self.state, network_id, nics, self.label)
            network = Network(id=network_id, pool=tuple(nics), gateway4=request.gateway4,
                              gateway6=request.gateway6, subnets=request.subnets,
                              options=dict(request.options), adopt=request.adopt,
                              ipv6=request.ipv6, adopted=adopted)
            await self.ledger.put_network(None, network)
            crashpoint("network.recorded")
        narrate(f"created {'adopt-mode ' if request.adopt else ''}network "
                f"{short(network_id)} with pool {', '.join(self.label(n) for n in nics)}")

    def _warn_adopted(self, nic: NicRef, adopted: Adopted) -> None:
        """Say what adopt mode will not carry, once, where an operator looks."""
        if adopted.address4 is None and adopted.address6 is None:
            self.log.warn("NIC {nic} has no global address to adopt yet: containers will "
                          "be refused until it has one", nic=self.label(nic))
        leased = [a for a in (adopted.address4, adopted.address6)
                  if a is not None and a.valid is not None]
        if leased:
            self.log.warn("NIC {nic}'s address {addresses} is leased; a container holds it "
                          "as a static address and does not renew it",
                          nic=self.label(nic), addresses=", ".join(map(str, leased)))
        if adopted.not_carried:
            self.log.warn("NIC {nic}: a Docker endpoint holds one IPv4 and one IPv6 address; "
                          "not carried into containers: {addresses}", nic=self.label(nic),
                          addresses=", ".join(map(str, adopted.not_carried)))

    async def resolve_pool(self, request: DefineNetwork) -> list[tuple[NicRef, LinkInfo]]:
        """The NICs a request names, each found and checked on the host."""
        links: list[tuple[LinkInfo, str | None]] = []  # and the PCI address it was named by
        for mac in request.macs:
            carriers = self.host.known(NicRef(mac))
            if len(carriers) > 1:
                # A bridge or bond takes its port's MAC, a VLAN its parent's:
                # say why that NIC cannot be lent rather than that it is shared.
                lower = guards.shared_mac_lower(carriers)
                why = lower and refusal(NicRef(mac), await self.host.inspect(lower))
                if why:
                    raise NicUnavailable(why)
                raise NicUnavailable(
                    f"MAC {mac} is carried by several interfaces "
                    f"({', '.join(link.name for link in carriers)}); hostnic cannot tell "
                    f"which one to hand out")
            link = await self.host.locate(NicRef(mac))
            if link is None:
                raise NicUnavailable(f"there is no NIC with MAC {mac} in the host network namespace")
            links.append((link, None))
        for name in request.names:
            link = await self.host.locate_name(name)
            if link is None:
                raise NicUnavailable(f"there is no interface {name} in the host network namespace")
            if link.mac is None:
                raise NicUnavailable(f"interface {name} has no Ethernet MAC address")
            links.append((link, None))
        for pci in request.pcis:
            found = [link for link in await self.host.locate_pci(pci) if link.mac]
            if not found:
                raise NicUnavailable(f"there is no NIC at PCI address {pci} in the host network "
                                     f"namespace (is it in another namespace, or bound to "
                                     f"another driver?)")
            if len(found) > 1:
                raise NicUnavailable(
                    f"PCI address {pci} carries several interfaces "
                    f"({', '.join(link.name for link in found)}); name the NIC by its MAC "
                    f"or its name")
            links.append((found[0], pci))
        nics: list[tuple[NicRef, LinkInfo]] = []
        for link, named_pci in links:
            assert link.mac is not None
            # A PCI address keys only a NIC named by it: one PCI function may
            # carry several ports, which their MACs and permanent addresses tell apart.
            nic = NicRef(link.mac, link.perm, named_pci)
            if any(nic.same_nic(other) for other, _ in nics):
                continue
            await self._check_lendable(nic, link)
            nics.append((nic, link))
        return nics

    async def _check_lendable(self, nic: NicRef, link: LinkInfo) -> None:
        why = refusal(nic, await self.host.inspect(link))
        if why is not None:
            raise NicUnavailable(why)
        if link.kind is not None:
            self.log.warn(
                "NIC {mac} ({name}) is a virtual {kind} link: if a container's "
                "namespace dies before the NIC is given back, the kernel deletes it "
                "instead of returning it", mac=nic.mac, name=link.name, kind=link.kind)

    async def drop_network(self, network_id: str) -> None:
        await self.ready()
        async with self.locks.hold("net:" + network_id):
            network = self.state.networks.get(network_id)
            if network is None:
                narrate(f"no network {short(network_id)}: nothing to do")
                return
            await self.ledger.put_network(network, None)
        narrate(f"deleted network {short(network_id)}")

    async def forget_network(self, network_id: str) -> Network:
        """An operator removes a network dockerd does not know (its create was
        cut short by a restart and dockerd's retry came without a body), so
        its NICs can serve another network. Refused while an endpoint holds one."""
        await self.ready()
        async with self.locks.hold("net:" + network_id):
            network = self._network(network_id)
            holders = [c for c in self.state.claims.values() if c.network_id == network_id]
            if holders:
                raise NicUnavailable(
                    f"network {short(network_id)} still has {len(holders)} endpoint"
                    f"{'s' if len(holders) > 1 else ''} ({', '.join(short(c.endpoint_id) for c in holders)}); "
                    f"remove the containers with docker first")
            await self.ledger.put_network(network, None)
        self.events.note("forget-network", network=network_id)
        self.log.info("operator removed network {network}", network=short(network_id))
        return network

    # -- endpoints ---------------------------------------------------------

    async def claim(self, request: ClaimNic) -> Claimed:
        """Claim a NIC of the network's pool for the endpoint."""
        await self.ready()
        ref = request.endpoint
        async with self.locks.hold("ep:" + ref.endpoint_id):
            held = self.state.claims.get(ref.endpoint_id)
            if held is not None:
                if held.network_id != ref.network_id:
                    raise HostnicError(f"endpoint {short(ref.endpoint_id)} already exists "
                                       f"in another network")
                return self._claimed(held)  # a retry: the same answer
            network = self._network(ref.network_id)
            twin = next((c for c in self.state.claims.values()
                         if c.transit_name == transit_name(ref.endpoint_id)), None)
            if twin is not None:
                raise HostnicError(
                    f"endpoint {short(ref.endpoint_id)} shares its first 13 characters with "
                    f"endpoint {short(twin.endpoint_id)}, so their NICs would wear the same "
                    f"transit name; recreate the container")
            # No await between choosing and claiming: the claim is in the ledger
            # before anyone else can choose.
            nic = pools.choose(self.state, network, request.pinned_mac,
                               lambda n: bool(self.host.known(n)), self.label,
                               pinned_pci=request.pinned_pci)
            claim = Claim(endpoint_id=ref.endpoint_id, network_id=network.id, nic=nic,
                          created_at=self.clock(), adopted=network.adopted.get(nic.mac))
            await self.ledger.put_claim(None, claim)
            crashpoint("endpoint.recorded")
            if network.adopt:
                claim = await self._adopt(network, claim)
        narrate(f"endpoint {short(ref.endpoint_id)} claimed NIC {self.label(nic)}")
        return self._claimed(claim)

    def _claimed(self, claim: Claim) -> Claimed:
        network = self.state.networks.get(claim.network_id)
        adopted = claim.adopted
        if adopted is None or network is None or not network.adopt:
            return Claimed(claim.mac)
        four, six = adopted.address4, adopted.address6
        return Claimed(claim.mac, address4=four.cidr if four else None,
                       address6=six.cidr if six else None)

    async def _adopt(self, network: Network, claim: Claim) -> Claim:
        """Read the claimed NIC's configuration now (it is home and was not
        lent), so the container gets what the NIC has today, DHCP renewals
        included; refuse if it has nothing to adopt."""
        link = await self.host.locate(claim.nic)
        adopted = await self.host.adopt(link.index) if link is not None else claim.adopted
        if adopted is None or (adopted.address4 is None and adopted.address6 is None):
            await self.ledger.put_claim(claim, None)
            raise NicUnavailable(
                f"NIC {self.label(claim.nic)} has no global address to adopt; give it one "
                f"(is its DHCP client done?) or create the network with --subnet and "
                f"--gateway")
        current = self.state.claims.get(claim.endpoint_id)
        if current is None:
            raise UnknownObject(f"endpoint {short(claim.endpoint_id)} was deleted meanwhile")
        adopted_claim = attrs.evolve(current, adopted=adopted)
        await self.ledger.put_claim(current, adopted_claim)
        held = self.state.networks.get(network.id)
        if held is not None and _differs(held.adopted.get(claim.mac), adopted):
            self._warn_adopted(claim.nic, adopted)
            await self.ledger.put_network(held, attrs.evolve(
                held, adopted={**held.adopted, claim.mac: adopted}))
        return adopted_claim

    def _claim_in(self, ref: EndpointKey) -> Claim:
        claim = self.state.claims.get(ref.endpoint_id)
        if claim is None or claim.network_id != ref.network_id:
            raise UnknownObject(f"hostnic holds no endpoint {short(ref.endpoint_id)} "
                                f"in network {short(ref.network_id)}")
        return claim

    async def lend(self, request: LendNic) -> Lent:
        await self.ready()
        ref = request.endpoint
        async with self.locks.hold("ep:" + ref.endpoint_id):
            claim = self._claim_in(ref)
            async with self.locks.hold("nic:" + claim.nic.key):
                claim = await self.lender.lend(ref.endpoint_id, request.sandbox_key)
        network = self.state.networks.get(claim.network_id)
        if network is not None and network.adopt and claim.adopted is not None:
            adopted = claim.adopted  # adopt mode always carries the NIC's IPv6, if it has one
            return Lent(claim.transit_name, adopted.gateway4, adopted.gateway6, adopted.routes)
        return Lent(claim.transit_name, network.gateway4 if network else None,
                    network.gateway6 if network else None)

    async def leave(self, ref: EndpointKey) -> None:
        await self.ready()
        async with self.locks.hold("ep:" + ref.endpoint_id):
            claim = self.state.claims.get(ref.endpoint_id)
            if claim is None:
                return
            async with self.locks.hold("nic:" + claim.nic.key):
                await self.lender.leave(ref.endpoint_id)

    async def give_back(self, ref: EndpointKey) -> None:
        """The endpoint is gone: restore its NIC as recorded and drop the claim
        (or note durably to do so once the NIC is home)."""
        await self.ready()
        async with self.locks.hold("ep:" + ref.endpoint_id):
            claim = self.state.claims.get(ref.endpoint_id)
            if claim is None:
                narrate(f"no endpoint {short(ref.endpoint_id)}: nothing to do")
                return
            try:
                async with self.locks.hold("nic:" + claim.nic.key):
                    await self.lender.give_back(ref.endpoint_id)
            except HostnicError:
                # dockerd ignores this answer and will not ask again: we will.
                self.retries.schedule("ep:" + ref.endpoint_id,
                                      lambda: self._retry_delete(ref))
                raise
        self.retries.succeeded("ep:" + ref.endpoint_id)

    async def _retry_delete(self, ref: EndpointKey) -> None:
        self.log.info("retrying the delete of endpoint {endpoint}",
                      endpoint=short(ref.endpoint_id))
        await self.give_back(ref)

    def claim_of(self, ref: EndpointKey) -> Claim | None:
        return self.state.claims.get(ref.endpoint_id)

    async def release(self, nic: NicRef) -> Released:
        """An operator hands back a NIC whose claim outlived its container
        (named by its MAC, or by the PCI address it was pooled by)."""
        await self.ready()
        claim = self.state.claim_of(nic)
        if claim is None:
            raise UnknownObject(f"NIC {nic.mac or nic.pci} is not claimed by any hostnic "
                                f"endpoint")
        if claim.attachment is not None and claim.endpoint_id in self.attachments.held:
            # Inside the namespace its ADD was handed, which hostnic holds:
            # brought home from there (letting go of that namespace would
            # delete a virtual NIC, or send a physical one to the first one).
            await self.attachments.detach(DetachNic(claim.attachment))
            self.events.note("release", mac=claim.mac, endpoint=claim.endpoint_id, found=True)
            return Released(claim.mac, claim.endpoint_id, found=True,
                            restored=claim.original is not None)
        async with self.locks.hold("nic:" + claim.nic.key):
            return await self.lender.release(claim.nic)

    # -- CNI attachments (hostnic.core.attachments) ---------------------------

    async def attach(self, request: AttachNic) -> Attached:
        return await self.attachments.attach(request)

    async def detach(self, request: DetachNic) -> None:
        await self.attachments.detach(request)

    async def check_attachment(self, request: CheckAttachment) -> list[str]:
        return await self.attachments.check(request)

    async def collect_attachments(self, request: CollectAttachments) -> list[Attachment]:
        return await self.attachments.collect(request)

    def holds_sandbox(self, sandbox: Sandbox) -> bool:
        """Whether an attachment holds ``sandbox`` until its DEL (then the
        front end must not close it)."""
        return self.attachments.holds(sandbox)

    async def has_free_nic(self, choice: NicChoice) -> bool:
        """Whether a NIC of ``choice`` could be attached now (CNI's STATUS)."""
        return await self.attachments.free_nic(choice)

    # -- reconciliation and link events ------------------------------------

    async def reconcile(self) -> dict[str, Any]:
        """Settle every claim whose NIC was lent against the host (see
        ``Lender.settle``); a claim that fails is retried later."""
        started = self.clock()
        outcomes: dict[str, list[str]] = {"restored": [], "released": [], "absent": [],
                                          "failed": []}
        for claim in list(self.state.claims.values()):
            if claim.original is None:
                continue
            try:
                async with self.locks.hold("nic:" + claim.nic.key):
                    outcome = await self.lender.settle(claim.nic, thorough=True)
            except Exception as e:
                # One NIC that cannot be settled now must not keep hostnic from
                # serving the others: it is retried. A bug is logged in full.
                outcomes["failed"].append(claim.mac)
                if isinstance(e, HostnicError):
                    self.log.error("reconciling NIC {nic} failed: {error}",
                                   nic=claim.mac, error=e.message)
                else:
                    self.log.failure("reconciling NIC {nic} failed unexpectedly", nic=claim.mac)
                self._settle_later(claim.nic)
                continue
            if outcome == "in-flight":
                self._settle_later(claim.nic)  # its container may yet start
            key = {"away": "absent"}.get(outcome or "", outcome or "")
            if key in outcomes:
                outcomes[key].append(claim.mac)
        report = {"at": self.clock(), **outcomes, "claims": len(self.state.claims),
                  "seconds": round(self.clock() - started, 6)}
        self.last_reconciliation = report
        self.events.note("reconciliation", **report)
        self.log.info("reconciliation: {restored} restored, {released} released, "
                      "{absent} not in the host namespace, {failed} failed",
                      restored=len(outcomes["restored"]), released=len(outcomes["released"]),
                      absent=len(outcomes["absent"]), failed=len(outcomes["failed"]))
        return report

    def settle_all(self) -> None:
        """Settle every lent NIC thoroughly, in the background (one per NIC,
        under its lock): for when a dockerd call was lost without trace."""
        for claim in list(self.state.claims.values()):
            if claim.original is not None:
                self.settle_soon(claim.nic, thorough=True)

    def _link_appeared(self, link: LinkInfo) -> None:
        """A link appeared or changed in the host namespace: if it is a lent
        NIC, settle it under its lock, after whatever holds that lock now (a
        DeleteEndpoint that just missed it will have marked its claim by then).
        A NIC that wears its transit name, or looks as recorded, needs nothing."""
        claim = self.state.claim_of_link(link.mac, link.perm, link.name, link.pci)
        if claim is None or claim.original is None:
            return
        if claim.phase is Phase.JOINED and (
                link.name == claim.transit_name
                or claim.original.shown_by(link.name, link.mac, link.mtu, link.up)):
            return
        # A CNI attachment's NIC home by itself: its namespace died, and if its
        # DEL never reached hostnic, none will come: thorough, it is released
        # once its namespace is gone (Docker's endpoints wait for dockerd's).
        self.settle_soon(claim.nic, thorough=claim.attachment is not None)

    def settle_soon(self, nic: NicRef, thorough: bool = False) -> None:
        if nic.key in self._settling:
            return  # one queued settle sees every change before it runs
        self._settling.add(nic.key)
        Deferred.fromCoroutine(self._settle(nic, thorough))

    async def _settle(self, nic: NicRef, thorough: bool) -> None:
        untold()  # started from a call's link event, but not part of that call
        try:
            async with self.locks.hold("nic:" + nic.key):
                self._settling.discard(nic.key)
                outcome = await self.lender.settle(nic, thorough)
        except HostnicError as e:
            self.log.error("settling NIC {nic} failed: {error}", nic=nic.mac, error=e.message)
            self._settle_later(nic)
        except Exception:
            self.log.failure("settling NIC {nic} failed unexpectedly", nic=nic.mac)
            self._settle_later(nic)
        else:
            if outcome == "in-flight":
                self._settle_later(nic)  # its container may yet start
            elif thorough:
                self.retries.succeeded("nic:" + nic.key)
        finally:
            self._settling.discard(nic.key)

    def _settle_later(self, nic: NicRef) -> None:
        self.retries.schedule("nic:" + nic.key, lambda: self._settle_async(nic))

    async def _settle_async(self, nic: NicRef) -> None:
        self.settle_soon(nic, thorough=True)
