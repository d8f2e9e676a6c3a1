"""CNI attachments: a NIC claimed for (network, container, interface), moved
into the namespace the runtime hands over, configured there, and given back.

The same claims, ledger and lender as Docker's endpoints: an attachment is a
claim keyed by ``Attachment.endpoint_id``, so one NIC is never held by a
Docker endpoint and a pod at once, and a restart reconciles both alike. What
dockerd does for Docker (move the NIC in, name it, configure it, bring it
back) hostnic does here itself, through the host port's handed-namespace
steps. Each step is durable before the next (the claim, then the record,
then the moves), so a crash between any two leaves a claim that says how to
get the NIC back; a failed ADD undoes every earlier step.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs
from twisted.logger import Logger

from hostnic.core import pools
from hostnic.core.commands import (AttachNic, Attached, CheckAttachment, CollectAttachments,
                                   DefineNetwork, DetachNic, InsideConfig, NicChoice)
from hostnic.core.crashpoints import crashpoint
from hostnic.core.narration import narrate
from hostnic.core.ports import Sandbox
from hostnic.errors import HostnicError, NicUnavailable, UnknownObject
from hostnic.state.model import (AF_INET, AF_INET6, Adopted, Attachment, Claim, Network, NicRef, Phase,
                                 Route, transit_name)

if TYPE_CHECKING:
    from hostnic.core.owner import Core

log = Logger()


def adopted_config(adopted: Adopted) -> InsideConfig:
    """Adopt mode: the NIC's own first addresses (as static ones: a lease is
    not renewed inside), its own default routes and its other routes."""
    addresses = tuple(attrs.evolve(a, valid=None, preferred=None)
                      for a in (adopted.address4, adopted.address6) if a is not None)
    defaults = tuple(Route(family, None, 0, gateway) for family, gateway in (
        (AF_INET, adopted.gateway4), (AF_INET6, adopted.gateway6)) if gateway is not None)
    routes = tuple(attrs.evolve(r, table=254, priority=None) for r in adopted.routes)
    return InsideConfig(addresses, adopted.gateway4, adopted.gateway6, defaults + routes)


def inside_routes(config: InsideConfig) -> tuple[Route, ...]:
    """The routes to make inside: each with its family's gateway if it names
    none (as CNI's reference plugins do)."""
    made = []
    for route in config.routes:
        gateway = route.gateway or (config.gateway4 if route.family == AF_INET
                                    else config.gateway6)
        made.append(attrs.evolve(route, gateway=gateway))
    return tuple(made)


@attrs.define(eq=False)
class Attachments:
    """The CNI front end's half of the core.

    The namespace an ADD was handed is held (its descriptors stay open) until
    the attachment's DEL: a namespace lives while a descriptor of it is
    open, so a runtime that calls DEL after the container is gone (containerd's
    ``ctr run --cni`` does, with no CNI_NETNS) still finds the NIC there, and
    it comes home to hostnic's namespace; without that, a physical NIC would
    go to the machine's first namespace and a virtual one would be deleted.
    Held namespaces live in memory only: after a restart the kernel's return
    of a physical NIC, and its settle, take over."""

    core: "Core"
    held: dict[str, Sandbox] = attrs.field(factory=dict)  # by endpoint id

    def holds(self, sandbox: Sandbox) -> bool:
        return any(s is sandbox for s in self.held.values())

    def let_go(self) -> None:
        """Close every held namespace (the daemon stops)."""
        held, self.held = self.held, {}
        for sandbox in held.values():
            sandbox.close()

    def _hold(self, key: str, sandbox: Sandbox) -> None:
        previous = self.held.pop(key, None)
        if previous is not None and previous is not sandbox:
            previous.close()
        self.held[key] = sandbox
        # Attachments released without a DEL (a settle after the namespace
        # died, an operator's release) let go of theirs here.
        for gone in [k for k in self.held if k not in self.core.state.claims]:
            self._drop(gone)

    def _drop(self, key: str) -> None:
        previous = self.held.pop(key, None)
        if previous is not None:
            previous.close()

    def _claim(self, attachment: Attachment) -> Claim | None:
        return self.core.state.claims.get(attachment.endpoint_id)

    # -- ADD ---------------------------------------------------------------

    async def attach(self, request: AttachNic) -> Attached:
        core = self.core
        await core.ready()
        attachment = request.attachment
        key = attachment.endpoint_id
        async with core.locks.hold("ep:" + key):
            held = self._claim(attachment)
            if held is not None:
                # An ADD the runtime repeats (its answer was lost), or one a
                # crash cut short: what is there is given back first.
                await self._detach(held, request.sandbox)
                if self._claim(attachment) is not None:
                    raise NicUnavailable(
                        f"NIC {held.mac} of an earlier attachment of {held.holder} is not "
                        f"back in the host namespace yet; delete the attachment, then "
                        f"add it again")
            claim = await self._claim_nic(request)
            try:
                async with core.locks.hold("nic:" + claim.nic.key):
                    attached = await self._attach(claim, request)
            except BaseException:
                await self._undo(attachment, request.sandbox)
                raise
            self._hold(key, request.sandbox)
            return attached

    async def _claim_nic(self, request: AttachNic) -> Claim:
        """A free NIC of the choice, claimed durably (no await between the
        choice and the claim)."""
        core = self.core
        attachment = request.attachment
        choice = request.choice
        pool, problems = await self.candidates(choice)
        if problems and not pool:
            raise problems[0]
        twin = next((c for c in core.state.claims.values()
                     if c.transit_name == transit_name(attachment.endpoint_id)
                     and c.endpoint_id != attachment.endpoint_id), None)
        if twin is not None:  # (a hash's first 13 characters: never seen, but cheap)
            raise NicUnavailable(f"the attachment's transit name is {twin.holder}'s; "
                                 f"add it under another interface name")
        network = Network(id=attachment.network_id, pool=tuple(pool))
        nic = pools.choose(core.state, network, None, lambda n: bool(core.host.known(n)),
                           core.label)
        claim = Claim(endpoint_id=attachment.endpoint_id, network_id=attachment.network_id,
                      nic=nic, created_at=core.clock(), attachment=attachment)
        await core.ledger.put_claim(None, claim)
        crashpoint("attach.claimed")
        return claim

    async def _attach(self, claim: Claim, request: AttachNic) -> Attached:
        core = self.core
        attachment = request.attachment
        sandbox = request.sandbox
        config = request.config
        if request.adopt:  # what the NIC has now, before anything touches it
            home = await core.host.locate(claim.nic)
            if home is None:
                raise NicUnavailable(f"NIC {claim.mac} left the host namespace")
            config = adopted_config(await core.host.adopt(home.index))
            if not config.addresses:
                raise NicUnavailable(f"NIC {core.label(claim.nic)} has no global address to "
                                     f"adopt; give it one or configure IPAM for the network")
        # Recorded durably, then home under its transit name (as for a Join).
        claim = await core.lender.lend(claim.endpoint_id, sandbox.key)
        link = await core.host.locate(claim.nic, claim.transit_name, claim.lent_index)
        if link is None:
            raise NicUnavailable(f"NIC {claim.mac} left the host namespace while it was "
                                 f"being attached")
        moved = await core.host.move_into(link.index, sandbox, attachment.ifname)
        crashpoint("attach.moved")
        # The routes asked for, and no other: an IPAM result's gateway asks
        # for none (a second network must not take the pod's default route).
        routes = inside_routes(config)
        await core.host.configure_in(sandbox, moved.index, request.mtu, config.addresses,
                                     routes)
        narrate(f"NIC {claim.mac} attached to {sandbox.key} as {attachment.ifname} for "
                f"{claim.holder}")
        return Attached(mac=claim.mac, ifname=attachment.ifname,
                        mtu=request.mtu or moved.mtu, sandbox=sandbox.key,
                        pci=claim.nic.pci or (link.parent_dev if link.parent_bus == "pci"
                                              else None),
                        config=attrs.evolve(config, routes=routes))

    async def _undo(self, attachment: Attachment, sandbox: Sandbox) -> None:
        """A failed ADD: every step taken is undone (the NIC home as recorded,
        nothing claimed), as far as the host allows; what it does not, the
        claim keeps, marked for release, and is settled later."""
        claim = self._claim(attachment)
        if claim is None:
            return
        try:
            async with self.core.locks.hold("nic:" + claim.nic.key):
                await self._give_back(claim, sandbox)
        except HostnicError as e:
            log.error("undoing the attachment of NIC {nic} failed: {error}; it is kept "
                      "and given back later", nic=claim.mac, error=e.message)
            self.core.settle_soon(claim.nic, thorough=True)

    # -- DEL ---------------------------------------------------------------

    async def detach(self, request: DetachNic) -> None:
        core = self.core
        await core.ready()
        key = request.attachment.endpoint_id
        async with core.locks.hold("ep:" + key):
            claim = self._claim(request.attachment)
            if claim is None:
                narrate(f"no attachment {request.attachment.ifname} of container "
                        f"{request.attachment.container_id[:12]}: nothing to do")
                return
            await self._detach(claim, request.sandbox)

    async def _detach(self, claim: Claim, sandbox: Sandbox | None) -> None:
        async with self.core.locks.hold("nic:" + claim.nic.key):
            await self._give_back(claim, sandbox)

    async def _give_back(self, claim: Claim, sandbox: Sandbox | None) -> None:
        lender = self.core.lender
        if claim.original is None:  # never recorded, so never touched
            await self.core.ledger.put_claim(claim, None)
            narrate(f"released NIC {claim.mac} (never attached)")
            return
        marked = await lender.mark_releasing(claim)
        assert marked is not None
        crashpoint("detach.marked")
        attachment = claim.attachment
        # The namespace the runtime hands over now, then the one ADD was
        # handed (the path may name another namespace by now: ctr's
        # /proc/PID/ns/net once the PID is reused).
        kept = self.held.get(claim.endpoint_id)
        for inside in dict.fromkeys(s for s in (sandbox, kept) if s is not None):
            if attachment is not None and await self.core.host.bring_home(
                    inside, claim.nic, attachment.ifname, claim.transit_name,
                    claim.lent_index) is not None:
                crashpoint("detach.home")
                break
        self._drop(claim.endpoint_id)  # (the NIC is home, or in neither)
        if not await lender.restore_and_release(marked):
            log.warn("NIC {nic} of {holder} is not back in the host namespace; it will be "
                     "restored when it appears", nic=claim.mac, holder=claim.holder)

    # -- CHECK -------------------------------------------------------------

    async def check(self, request: CheckAttachment) -> list[str]:
        """What differs between the NIC inside and what the attachment gave
        it (empty: nothing)."""
        core = self.core
        await core.ready()
        attachment = request.attachment
        claim = self._claim(attachment)
        if claim is None or claim.phase is not Phase.JOINED:
            raise UnknownObject(f"hostnic holds no attachment {attachment.ifname} of container "
                                f"{attachment.container_id[:12]} in network "
                                f"{attachment.network!r}")
        inside = await core.host.look_in(request.sandbox, attachment.ifname)
        if inside is None:
            return [f"there is no interface {attachment.ifname} in {request.sandbox.key}"]
        differences = []
        if not claim.nic.is_link(inside.link, claim.lent_index) and inside.link.mac != claim.mac:
            differences.append(f"{attachment.ifname} is not NIC {claim.mac} "
                               f"(its MAC is {inside.link.mac})")
        if request.mtu is not None and inside.link.mtu != request.mtu:
            differences.append(f"MTU {inside.link.mtu}, not {request.mtu}")
        if not inside.link.up:
            differences.append(f"{attachment.ifname} is down")
        present = {a.cidr for a in inside.addresses}
        for address in request.expected.addresses:
            if address.cidr not in present:
                differences.append(f"address {address.cidr} is missing")
        have = {(r.family, r.dst, r.dst_len, r.gateway) for r in inside.routes}
        for route in inside_routes(request.expected):
            if (route.family, route.dst, route.dst_len, route.gateway) not in have:
                differences.append(f"route {route} is missing")
        return differences

    # -- GC ----------------------------------------------------------------

    async def collect(self, request: CollectAttachments) -> list[Attachment]:
        """Detach the network's attachments the runtime no longer knows (from
        the namespaces their ADDs were handed); the ones detached. The first
        failure is raised once every other was tried."""
        core = self.core
        await core.ready()
        stale = [c.attachment for c in list(core.state.claims.values())
                 if c.attachment is not None and c.attachment.network == request.network
                 and (c.attachment.container_id, c.attachment.ifname) not in request.valid]
        failed: list[HostnicError] = []
        for attachment in stale:  # (one that cannot be detached now stops no other)
            try:
                await self.detach(DetachNic(attachment))
            except HostnicError as e:
                failed.append(e)
        if failed:
            raise failed[0]
        return stale

    async def candidates(self, choice: NicChoice) -> tuple[list[NicRef], list[NicUnavailable]]:
        """The NICs ``choice`` names, and why the entries not found were not.
        Each entry on its own: a NIC a claim holds is away, or about to be,
        and stands for itself as that claim knows it (so a NIC whose MAC
        changed is still the claimed one, and a refusal names its holder)."""
        core = self.core
        claims = list(core.state.claims.values())
        pool: list[NicRef] = []

        def add(nic: NicRef) -> None:
            held = core.state.claim_of(nic)
            nic = held.nic if held is not None else nic
            if not any(nic.same_nic(p) for p in pool):
                pool.append(nic)

        problems: list[NicUnavailable] = []
        entries = ([(DefineNetwork("", macs=(mac,), names=()), None) for mac in choice.macs]
                   + [(DefineNetwork("", (), names=(name,)), name) for name in choice.names]
                   + [(DefineNetwork("", (), (), pcis=(pci,)), None) for pci in choice.pcis])
        for entry, name in entries:
            held = (next((c for c in claims if c.nic.same_nic(NicRef(entry.macs[0]))), None)
                    if entry.macs else
                    next((c for c in claims if c.nic.pci == entry.pcis[0]), None)
                    if entry.pcis else None)
            if held is not None:  # (away: not to be looked for at home)
                add(held.nic)
                continue
            try:
                found = await core.resolve_pool(entry)
            except NicUnavailable as e:
                # Not home under that name: a lent NIC wore it when recorded.
                lent = next((c for c in claims if name is not None and c.original is not None
                             and c.original.name == name), None)
                if lent is not None:
                    add(lent.nic)
                else:
                    problems.append(e)
                continue
            for nic, _ in found:
                add(nic)
        return pool, problems

    async def free_nic(self, choice: NicChoice) -> bool:
        """Whether a NIC of ``choice`` is free and home (STATUS)."""
        await self.core.ready()
        pool, _ = await self.candidates(choice)
        return any(self.core.state.claim_of(n) is None and self.core.host.known(n)
                   for n in pool)

