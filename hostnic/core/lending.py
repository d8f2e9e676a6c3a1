"""Lending one NIC to an endpoint and giving it back: the state machine of a
claim against the host.

Every method runs with the NIC's lock held by its caller (one serialisation
point per NIC), and reads the claim afresh after each ``await``: while it
waited, another path may have moved the claim on.

Write-ahead: before the kernel is touched, the state says how to get the NIC
back. The NIC's original state is durable before the rename that lends it;
"dockerd deleted the endpoint" is durable before a restore that a crash may
cut short. A failed step undoes itself: a rename that fails puts the NIC back
as recorded, and the record is dropped only once that worked.
"""

from __future__ import annotations

from typing import Any, Callable

import attrs
from twisted.logger import Logger

from hostnic.core.crashpoints import crashpoint
from hostnic.core.events import EventLog
from hostnic.core.guards import refusal
from hostnic.core.narration import narrate
from hostnic.core.ports import HostPort
from hostnic.errors import HostnicError, NicUnavailable, StoreError, UnknownObject
from hostnic.sentences import short
from hostnic.state.ledger import Ledger
from hostnic.state.model import Claim, LinkInfo, NicRef, NicState, Phase

# dockerd makes a container's namespace file (the SandboxKey) only when it
# starts the container, after Join: until then the NIC waits at home under
# its transit name, neither in a container nor abandoned. A claim that young,
# its NIC home under that name, is not given back for want of its namespace;
# it is settled again later. (Under any other name it has been in a
# container: the kernel or dockerd brought it back.)
JOIN_IN_FLIGHT_SECONDS = 60.0


def describe(state: NicState) -> str:
    addresses = ", ".join(map(str, state.addresses)) or "no addresses"
    return (f"{state.name} mtu {state.mtu} {'up' if state.up else 'down'} "
            f"{state.mac} ({addresses})")


@attrs.frozen
class Released:
    """What an operator's release did."""

    mac: str
    endpoint: str
    found: bool
    restored: bool
    problems: tuple[str, ...] = ()


@attrs.define(eq=False)
class Lender:
    host: HostPort
    ledger: Ledger
    events: EventLog
    clock: Callable[[], float]
    # The last restore of each NIC (by pooled MAC), for the admin view: what
    # could not be put back is named there as well as in the log.
    restores: dict[str, dict[str, Any]] = attrs.field(factory=dict)
    log = Logger()

    def _claim(self, endpoint_id: str) -> Claim | None:
        return self.ledger.state.claims.get(endpoint_id)

    async def _find(self, claim: Claim) -> LinkInfo | None:
        """The link that is the claim's NIC, wherever it is in the host
        namespace: under its transit name or any other, proven by identity."""
        return await self.host.locate(claim.nic, claim.transit_name, claim.lent_index)

    def _current(self, endpoint_id: str) -> Claim:
        claim = self._claim(endpoint_id)
        if claim is None:
            raise UnknownObject(f"endpoint {short(endpoint_id)} was deleted meanwhile")
        return claim

    # -- Join --------------------------------------------------------------

    async def lend(self, endpoint_id: str, sandbox_key: str | None) -> Claim:
        """Record the NIC, then rename it to its transit name. A Join whose
        record exists (a retry, or a Join cut short by a crash) resumes here."""
        claim = self._current(endpoint_id)
        if claim.phase is Phase.CREATED:
            claim = await self._record(claim, sandbox_key)
        if claim.phase is not Phase.JOINED:
            raise NicUnavailable(
                f"endpoint {short(endpoint_id)} has already left ({claim.phase.value}); "
                f"dockerd must create a new endpoint")
        # Where the NIC is now, proven again: the record's save took a while,
        # and a Join that resumes finds it wherever it is (from the inventory:
        # no netlink request).
        link = await self._find(claim)
        claim = self._current(endpoint_id)
        if link is None:
            raise NicUnavailable(
                f"NIC {claim.mac} of endpoint {short(endpoint_id)} is not in the host "
                f"network namespace; it cannot be handed to the container")
        if link.name != claim.transit_name:
            # dockerd moves whatever link wears the name Join answers: that
            # must be the NIC, so a name another link took is a refusal,
            # before the NIC is touched.
            squatter = await self.host.locate_name(claim.transit_name)
            if squatter is not None and squatter.index != link.index:
                raise NicUnavailable(
                    f"interface {claim.transit_name} (index {squatter.index}, MAC "
                    f"{squatter.mac or 'none'}) is not NIC {claim.mac} but wears the name "
                    f"hostnic lends that NIC under for endpoint {short(endpoint_id)}; "
                    f"rename or delete that interface, then start the container again")
            try:
                await self.host.rename(link.index, claim.transit_name)
            except HostnicError:
                await self._undo_lend(claim, link.index)
                raise
            crashpoint("join.renamed")
        narrate(f"NIC {claim.mac} lent as {claim.transit_name}")
        return self._current(endpoint_id)

    async def _record(self, claim: Claim, sandbox_key: str | None) -> Claim:
        """Check the guards and record the NIC durably, from one inspection;
        the claim as it is then."""
        link = await self.host.locate(claim.nic)
        if link is None:
            raise NicUnavailable(
                f"NIC {claim.mac} of network {short(claim.network_id)} is not in the "
                f"host network namespace (is it inside another container?)")
        facts = await self.host.inspect(link, with_record=True)
        # The host may have changed since the network was created.
        why = refusal(claim.nic, facts, again=True)
        if why is not None:
            raise NicUnavailable(why)
        original = facts.state
        assert original is not None
        claim = self._current(claim.endpoint_id)
        if claim.phase is not Phase.CREATED:
            return claim
        joined = attrs.evolve(claim, phase=Phase.JOINED, original=original,
                              sandbox_key=sandbox_key, joined_at=self.clock())
        await self.ledger.put_claim(claim, joined)
        crashpoint("join.recorded")
        narrate(f"recorded {describe(original)}")
        return joined

    async def _undo_lend(self, claim: Claim, index: int) -> None:
        """A rename failed (and left the NIC down): put the NIC back as
        recorded; forget the record only if that fully worked."""
        assert claim.original is not None
        try:
            problems = await self.host.restore(index, claim.original)
        except HostnicError as e:
            problems = (e.message,)
        current = self._claim(claim.endpoint_id)
        if problems or current != claim:
            self.log.error("NIC {nic} could not be put back after a failed lend ({problems}); "
                           "its record is kept so hostnic can restore it later",
                           nic=claim.mac, problems="; ".join(problems))
            return
        created = attrs.evolve(claim, phase=Phase.CREATED, original=None, sandbox_key=None,
                               joined_at=None)
        try:
            await self.ledger.put_claim(claim, created)
        except StoreError as e:
            self.log.warn("NIC {nic} is back as it was, but its record stays: {error}",
                          nic=claim.mac, error=e.message)

    # -- Leave -------------------------------------------------------------

    async def leave(self, endpoint_id: str) -> None:
        claim = self._claim(endpoint_id)
        if claim is None or claim.phase is not Phase.JOINED:
            return
        await self.ledger.put_claim(claim, attrs.evolve(claim, phase=Phase.LEFT))
        crashpoint("leave.recorded")

    # -- DeleteEndpoint ----------------------------------------------------

    async def give_back(self, endpoint_id: str) -> None:
        """dockerd is done with the endpoint: restore its NIC and drop the claim,
        or, if the NIC is not home yet, leave a durable note to do so."""
        claim = self._claim(endpoint_id)
        if claim is None:
            narrate(f"no endpoint {short(endpoint_id)}: nothing to do")
            return
        if claim.original is None:
            await self.ledger.put_claim(claim, None)
            crashpoint("delete.released")
            narrate(f"released NIC {claim.mac} (never joined)")
            return
        if claim.phase is Phase.JOINED:
            # Leave never reached us: durably note that dockerd is done first.
            marked = await self.mark_releasing(claim)
            assert marked is not None
            claim = marked
            crashpoint("delete.marked")
        try:
            home = await self.restore_and_release(claim)
        except HostnicError:
            await self.mark_releasing(self._claim(endpoint_id))
            raise
        if not home:
            await self.mark_releasing(self._claim(endpoint_id))
            self.log.warn("NIC {nic} of endpoint {endpoint} is not back in the host "
                          "namespace; it will be restored when it appears",
                          nic=claim.mac, endpoint=short(endpoint_id))

    async def mark_releasing(self, claim: Claim | None) -> Claim | None:
        if claim is None or claim.phase is Phase.RELEASING:
            return claim
        releasing = attrs.evolve(claim, phase=Phase.RELEASING)
        await self.ledger.put_claim(claim, releasing)
        return releasing

    async def restore_and_release(self, claim: Claim) -> bool:
        """Restore the NIC as recorded and drop the claim; False if it is not home."""
        assert claim.original is not None
        link = await self._find(claim)
        if link is None:
            return False
        problems = await self.host.restore(link.index, claim.original)
        crashpoint("delete.restored")
        self._restored(claim, link.name, problems)
        current = self._claim(claim.endpoint_id)
        if current is not None and current.nic == claim.nic:
            await self.ledger.put_claim(current, None)
            crashpoint("delete.released")
            narrate(f"{claim.holder} released NIC {claim.mac}")
        return True

    def _restored(self, claim: Claim, found_as: str, problems: tuple[str, ...]) -> None:
        self.events.note("restore", mac=claim.mac, endpoint=claim.endpoint_id,
                          found_as=found_as, problems=list(problems))
        self.restores[claim.mac] = {"at": self.clock(), "endpoint": claim.endpoint_id,
                                    "found_as": found_as, "problems": list(problems)}
        if problems:
            self.log.warn("NIC {nic} (found as {name}) restored with problems: {problems}",
                          nic=claim.mac, name=found_as, problems="; ".join(problems))
        else:
            assert claim.original is not None
            narrate(f"NIC {claim.mac} restored from {found_as} to {describe(claim.original)}")

    # -- reconciliation and link events ------------------------------------

    async def settle(self, nic: NicRef, thorough: bool) -> str | None:
        """Make the host match the claim on ``nic``: a NIC whose endpoint dockerd
        deleted is restored and released once home; a lent NIC found home under
        a foreign name (the kernel returns a physical NIC as ``eth0`` or
        ``dev<N>`` when a container's namespace dies without dockerd) is
        restored. ``thorough`` (start-up, retries) also releases a NIC whose
        endpoint left or whose container is gone. Returns what it did."""
        claim = self.ledger.state.claim_of(nic)
        if claim is None or claim.original is None:
            return None
        if claim.phase is Phase.RELEASING or (thorough and claim.phase is Phase.LEFT):
            return "released" if await self.restore_and_release(claim) else "away"
        if claim.phase is not Phase.JOINED:
            return None
        link = await self._find(claim)
        if link is None:
            return "away"
        if thorough and claim.sandbox_key:
            alive = await self.host.namespace_exists(claim.sandbox_key)
            if link.name == claim.transit_name and (
                    alive or self.clock() - (claim.joined_at or 0.0) < JOIN_IN_FLIGHT_SECONDS):
                # Home under its transit name: its container is starting, or
                # stopping after a Leave hostnic never heard. Look again later.
                return "in-flight"
            if not alive:
                # Its container is gone and dockerd's Delete was lost: give it back.
                current = self._claim(claim.endpoint_id)
                if current is not None:
                    return "released" if await self.restore_and_release(current) else "away"
                return None
        if link.name != claim.transit_name and not claim.original.shown_by(
                link.name, link.mac, link.mtu, link.up):
            problems = await self.host.restore(link.index, claim.original)
            self._restored(claim, link.name, problems)
            return "restored"
        return None

    # -- the operator ------------------------------------------------------

    async def release(self, nic: NicRef) -> Released:
        """Hand back a NIC whose claim outlived its container."""
        claim = self.ledger.state.claim_of(nic)
        if claim is None:
            raise UnknownObject(f"NIC {nic.mac} is not claimed by any hostnic endpoint")
        link = await self._find(claim)
        if link is None:
            if claim.sandbox_key and await self.host.namespace_exists(claim.sandbox_key):
                raise NicUnavailable(
                    f"NIC {claim.mac} is inside the live namespace {claim.sandbox_key} of "
                    f"endpoint {short(claim.endpoint_id)}; stop or disconnect that "
                    f"container instead")
            current = self.ledger.state.claim_of(nic)
            if current is not None:
                await self.ledger.put_claim(current, None)
            self.events.note("release", mac=claim.mac, endpoint=claim.endpoint_id, found=False)
            return Released(claim.mac, claim.endpoint_id, found=False, restored=False)
        problems: tuple[str, ...] = ()
        if claim.original is not None:
            problems = await self.host.restore(link.index, claim.original)
            self._restored(claim, link.name, problems)
        current = self.ledger.state.claim_of(nic)
        if current is not None:
            await self.ledger.put_claim(current, None)
        self.events.note("release", mac=claim.mac, endpoint=claim.endpoint_id, found=True)
        narrate(f"operator released NIC {claim.mac} from endpoint {short(claim.endpoint_id)}")
        return Released(claim.mac, claim.endpoint_id, found=True,
                        restored=claim.original is not None, problems=problems)
