"""The lending state machine under retries, races, crashes and full disks:
one test (or more) per way it was seen to break. Races run under the
scheduler (tests/sched.py), so the interleaving really happens."""

from __future__ import annotations

from typing import Any, Callable

import attrs

from twisted.internet.defer import Deferred

from hostnic.api.libnetwork import define_network, lend_nic
from hostnic.core.commands import EndpointKey
from hostnic.errors import HostError, NicUnavailable, StoreError, UnknownObject
from hostnic.state.model import Address, NicRef, Phase
from tests.fakes import FakeLink, run_now
from tests.helpers import (EP, EP2, MAC1, MAC2, NET, NET2, SANDBOX, CoreTestCase, join_body,
                           network_body)
from tests.sched import Scheduler, gated

PERM1 = "52:54:00:aa:00:01"


class LendingTestCase(CoreTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.nic1 = self.host.add("ens4", MAC1, mtu=9000, up=True, perm=PERM1,
                                  addresses=[Address(2, "10.1.1.5", 24)])
        self.before = self.nic1.state()
        self.create_network(hostnic_mac=MAC1)
        self.create_endpoint(EP)

    def schedule(self, only: Callable[[str], bool] = lambda label: True) -> Scheduler:
        """From now on host calls and store writes wait for the scheduler."""
        scheduler = Scheduler(only=only)
        self.host.pause = scheduler.point
        self.threads.run = gated(scheduler)
        return scheduler

    def unschedule(self) -> None:
        self.host.pause = None
        self.threads.run = run_now

    def start(self, coroutine: Any) -> Deferred[Any]:
        return Deferred.fromCoroutine(coroutine)

    def join_call(self, endpoint_id: str = EP) -> Any:
        return self.core.lend(lend_nic(join_body(endpoint_id)))

    def assert_home_as_before(self, link: FakeLink | None = None) -> None:
        link = link or self.nic1
        self.assertEqual((link.where, link.state()), ("host", self.before))


class FullDiskTests(LendingTestCase):
    """1. A short write on a full disk was taken for a complete one."""

    def test_a_full_disk_refuses_the_change_and_loses_nothing(self) -> None:
        self.host.add("ens5", MAC2)
        before = self.durable()
        self.disk.space = 100  # less than a journal record
        message = self.refused(self.core.define_network(define_network(
            network_body(NET2, hostnic_mac=MAC2))), StoreError)
        self.assertIn("could not save its state", message)
        self.assertIn("No space left on device", message)
        self.assertNotIn(NET2, self.core.state.networks)
        self.assertEqual(self.durable(), before)  # the torn record is not read back
        # Space comes back: the same request works, and a restart reads it.
        self.disk.space = None
        self.create_network(NET2, hostnic_mac=MAC2)
        self.assertIn(NET2, self.new_core().state.networks)


class CrashBetweenRecordAndRenameTests(LendingTestCase):
    """2. dockerd retries a Join cut short by a crash after its record."""

    def test_the_retried_join_answers_a_name_that_exists(self) -> None:
        scheduler = self.schedule()
        join = self.start(self.join_call())
        while "rename.down" not in scheduler.labels():
            scheduler.step()
        self.assertEqual(self.durable().claims[EP].phase, Phase.JOINED)  # recorded...
        self.assertEqual(self.nic1.name, "ens4")  # ...not yet renamed: the process dies
        self.assertNoResult(join)
        self.unschedule()
        self.core = self.new_core()
        lent = self.join()  # dockerd's retry of the same call
        names = [l.name for l in self.host.home()]
        self.assertIn(lent.src_name, names)
        self.assertEqual(self.durable().claims[EP].original, attrs.evolve(self.before, recorded_at=1000.0))


class CreateNetworkRetryTests(LendingTestCase):
    """3. A CreateNetwork retried after a lost answer was refused, and the NIC
    then held for ever by a network dockerd believed it never made."""

    def test_the_same_create_again_succeeds_and_a_different_one_says_why(self) -> None:
        self.create_network(hostnic_mac=MAC1)  # the retry
        self.assertEqual(list(self.core.state.networks), [NET])
        body = network_body(hostnic_mac=MAC1)
        body["IPv4Data"][0]["Gateway"] = "192.168.7.254/24"
        message = self.refused(self.core.define_network(define_network(body)))
        self.assertEqual(message, f"hostnic already holds network {NET[:12]} with other "
                                  f"settings: IPv4 gateway 192.168.7.254 (held: 192.168.7.1)")

    def test_concurrent_duplicates_get_the_same_answer(self) -> None:
        self.call(self.core.give_back(EndpointKey(NET, EP)))
        self.call(self.core.drop_network(NET))
        for seed in range(20):
            scheduler = self.schedule()
            calls = [self.start(self.core.define_network(define_network(
                network_body(NET2, hostnic_mac=MAC1)))) for _ in range(3)]
            scheduler.run_randomly(seed)
            for d in calls:
                self.assertIsNone(self.successResultOf(d), seed)
            self.unschedule()
            self.assertEqual(list(self.durable().networks), [NET2])
            self.call(self.core.drop_network(NET2))


class JoinRacingDeleteTests(LendingTestCase):
    """4. dockerd deletes an endpoint while its Join is in flight (a cancelled
    start): DeleteEndpoint answered {} and then the claim came back."""

    def test_every_interleaving_ends_with_the_nic_home_and_no_claim(self) -> None:
        outcomes = set()
        for seed in range(60):
            if EP not in self.core.state.claims:
                self.create_endpoint(EP)
            scheduler = self.schedule()
            calls = [lambda: self.start(self.join_call(EP)),
                     lambda: self.start(self.core.give_back(EndpointKey(NET, EP)))]
            if seed % 2:
                calls.reverse()  # dockerd's two calls may reach us in either order
            started = [call() for call in calls]
            join, delete = started if seed % 2 == 0 else started[::-1]
            scheduler.run_randomly(seed)
            self.unschedule()
            self.assertIsNone(self.successResultOf(delete))
            joined: list[Any] = []
            join.addCallbacks(joined.append, lambda f: f.trap(UnknownObject))
            outcomes.add(bool(joined))
            self.assertNotIn(EP, self.core.state.claims, seed)
            self.assertNotIn(EP, self.durable().claims, seed)
            self.assert_home_as_before()
        self.assertEqual(outcomes, {True, False})  # both orders happened


class ConcurrentJoinsTests(LendingTestCase):
    """5. Sixteen Joins of one endpoint recorded the NIC as down, or its
    transit name as its own."""

    def test_sixteen_joins_record_the_nic_as_it_was(self) -> None:
        scheduler = self.schedule()
        joins = [self.start(self.join_call()) for _ in range(16)]
        scheduler.run_randomly(7)
        self.unschedule()
        names = {self.successResultOf(d).src_name for d in joins}
        self.assertEqual(names, {"hn" + EP[:13]})
        self.assertEqual(self.durable().claims[EP].original, attrs.evolve(self.before, recorded_at=1000.0))
        self.assertEqual(self.nic1.name, "hn" + EP[:13])


class LostWakeupTests(LendingTestCase):
    """6. A NIC that came home while DeleteEndpoint looked for it stayed
    ``eth0``, down, until the next restart."""

    def test_a_nic_arriving_during_the_delete_is_restored(self) -> None:
        src = self.join().src_name
        self.host.dockerd_moves_in(src, SANDBOX, "192.168.7.10")
        self.leave()
        scheduler = self.schedule(only=lambda label: label == "locate.answered")
        delete = self.start(self.core.give_back(EndpointKey(NET, EP)))
        self.assertEqual(scheduler.labels(), ["locate.answered"])  # "not home", in hand
        self.host.kernel_returns(MAC1)  # ...and now it is home: a link event
        scheduler.run(lambda n: 0)
        self.unschedule()
        self.successResultOf(delete)
        self.assert_home_as_before()
        self.assertEqual(self.core.state.claims, {})
        self.assertEqual(self.durable().claims, {})


class StuckClaimTests(LendingTestCase):
    """7. The restore worked but saving the release failed: the claim stayed
    'left' and the pool said 'all in use' for ever."""

    def setUp(self) -> None:
        super().setUp()
        src = self.join().src_name
        self.host.dockerd_moves_in(src, SANDBOX, "192.168.7.10")
        self.leave()
        self.host.dockerd_moves_back(MAC1, src)
        self.disk.space = 0
        self.assertIn("could not save", self.refused(
            self.core.give_back(EndpointKey(NET, EP)), StoreError))
        self.assert_home_as_before()  # restored...
        self.assertEqual(self.durable().claims[EP].phase, Phase.LEFT)  # ...but held

    def test_hostnic_retries_the_release_itself(self) -> None:
        self.reactor.advance(1)  # still full: the retry fails, and backs off
        self.assertIn(EP, self.core.state.claims)
        self.disk.space = None  # space again
        self.reactor.advance(2)
        self.assertEqual(self.durable().claims, {})
        self.assertEqual(self.create_endpoint(EP2).mac, MAC1)
        self.flushLoggedErrors()

    def test_a_restart_releases_it_whatever_the_nic_is_called(self) -> None:
        self.disk.space = None  # the disk has room again by the time hostnic restarts
        self.core = self.new_core()
        self.assertEqual(self.core.last_reconciliation["released"], [MAC1])
        self.assertEqual(self.create_endpoint(EP2).mac, MAC1)


class HalfMadeLendTests(LendingTestCase):
    """8. A failed rename left the NIC down with nothing to bring it back up."""

    def test_a_failed_rename_puts_the_nic_back_and_the_join_can_be_retried(self) -> None:
        self.host.fail["rename"] = HostError("could not rename interface: Device busy")
        self.assertIn("Device busy", self.refused(self.join_call(), HostError))
        self.assert_home_as_before()  # up again, as recorded
        self.assertEqual(self.durable().claims[EP].phase, Phase.CREATED)
        self.assertEqual(self.join().src_name, "hn" + EP[:13])

    def test_if_putting_it_back_fails_the_record_stays_for_later(self) -> None:
        self.host.fail["rename"] = HostError("could not rename interface: Device busy")
        self.host.fail["restore"] = HostError("netlink: Device busy")
        self.host.detach()  # no link events: only the record can bring it back
        self.refused(self.join_call(), HostError)
        self.assertFalse(self.nic1.up)  # still down, as the kernel left it...
        self.assertEqual(self.durable().claims[EP].original, attrs.evolve(self.before, recorded_at=1000.0))  # ...but recorded
        self.delete_endpoint()  # dockerd's clean-up of the failed start restores it
        self.assert_home_as_before()
        self.assertEqual(self.durable().claims, {})
        self.flushLoggedErrors()

    def test_a_link_event_puts_it_back_at_once(self) -> None:
        self.host.fail["rename"] = HostError("could not rename interface: Device busy")
        self.host.fail["restore"] = HostError("netlink: Device busy")
        self.refused(self.join_call(), HostError)
        # The rename's "down" was a link event: hostnic settles the NIC from its
        # record as soon as the failed Join lets go of it.
        self.assert_home_as_before()
        self.flushLoggedErrors()


class ManagementGuardTests(LendingTestCase):
    """9. The host's default route moved onto a pooled NIC after the network
    was made, and Join lent it."""

    def test_join_refuses_a_nic_that_now_carries_the_default_route(self) -> None:
        self.host.default_route_indexes.add(self.nic1.index)
        message = self.refused(self.join_call(), NicUnavailable)
        self.assertIn("now carries the host's default route", message)
        self.assert_home_as_before()
        self.assertEqual(self.durable().claims[EP].phase, Phase.CREATED)


class IdentityTests(LendingTestCase):
    """10. A NIC was known by its MAC only."""

    def test_a_mac_changed_in_the_container_comes_back_by_its_transit_name(self) -> None:
        # A virtual NIC: no permanent address to go by, only its index.
        virtual = self.host.add("ens5", MAC2, mtu=1400, up=True)
        before = virtual.state()
        self.create_network(NET2, hostnic_mac=MAC2)
        self.create_endpoint(EP2, NET2)
        src = self.join(EP2, NET2).src_name
        inside = self.host.dockerd_moves_in(src, SANDBOX, "192.168.7.10")
        inside.mac = "02:aa:bb:cc:dd:ee"
        self.leave(EP2, NET2)
        self.host.dockerd_moves_back(inside, src)
        self.delete_endpoint(EP2, NET2)
        self.assertEqual((virtual.where, virtual.state()), ("host", before))  # the MAC too
        self.assertNotIn(EP2, self.core.state.claims)

    def test_a_virtual_nic_renumbered_in_its_container_is_known_by_its_mac(self) -> None:
        virtual = self.host.add("ens5", MAC2, mtu=1400, up=True)
        before = attrs.evolve(virtual.state(), index=None)
        self.create_network(NET2, hostnic_mac=MAC2)
        self.create_endpoint(EP2, NET2)
        src = self.join(EP2, NET2).src_name
        inside = self.host.dockerd_moves_in(src, SANDBOX, "192.168.7.10", index_taken=True)
        self.leave(EP2, NET2)
        self.host.dockerd_moves_back(inside, src)
        self.delete_endpoint(EP2, NET2)
        self.assertEqual((virtual.where, attrs.evolve(virtual.state(), index=None)),
                         ("host", before))
        self.assertNotIn(EP2, self.core.state.claims)

    def test_a_kernel_returned_nic_with_a_changed_mac_is_known_by_its_permanent_address(
            self) -> None:
        src = self.join().src_name
        inside = self.host.dockerd_moves_in(src, SANDBOX, "192.168.7.10")
        inside.mac = "02:aa:bb:cc:dd:ee"
        self.host.kernel_returns("02:aa:bb:cc:dd:ee")  # as eth0, new MAC: a link event
        self.assert_home_as_before()

    def test_a_pooled_nic_with_a_changed_mac_is_still_refused_to_another_network(self) -> None:
        self.nic1.mac = "02:aa:bb:cc:dd:ee"  # changed on the host, same NIC
        message = self.refused(self.core.define_network(define_network(
            network_body(NET2, hostnic_name="ens4"))), NicUnavailable)
        self.assertIn("is already in hostnic network", message)


class SquatterTests(LendingTestCase):
    """11. A link already wore the endpoint's transit name (a leftover, another
    tool): Join answered that name without renaming the NIC, and dockerd
    would have moved the other link into the container."""

    def setUp(self) -> None:
        super().setUp()
        self.transit = "hn" + EP[:13]

    def test_join_refuses_a_name_another_link_wears_and_touches_nothing(self) -> None:
        squatter = self.host.add(self.transit, "02:00:00:00:5a:01", up=True)
        message = self.refused(self.join_call(), NicUnavailable)
        self.assertEqual(message, (
            f"interface {self.transit} (index {squatter.index}, MAC 02:00:00:00:5a:01) is not "
            f"NIC {MAC1} but wears the name hostnic lends that NIC under for endpoint "
            f"{EP[:12]}; rename or delete that interface, then start the container again"))
        self.assert_home_as_before()  # the NIC: up, under its own name
        self.assertEqual((squatter.name, squatter.up, squatter.mac),
                         (self.transit, True, "02:00:00:00:5a:01"))
        # Once the name is free, the same endpoint's Join lends the NIC.
        del self.host.links[squatter.index]
        self.assertEqual(self.join().src_name, self.transit)
        self.assertEqual(self.nic1.name, self.transit)

    def test_the_nics_mac_on_another_device_is_not_the_nic(self) -> None:
        # Same MAC: a copy (a VLAN, a bridge, a macvlan), with another
        # permanent address or, as such devices have, none.
        for perm in ("52:54:00:aa:00:99", None):
            squatter = self.host.add(self.transit, MAC1, perm=perm, up=True)
            self.assertIn(f"is not NIC {MAC1}", self.refused(self.join_call(), NicUnavailable))
            self.assert_home_as_before()
            del self.host.links[squatter.index]

    def test_a_record_from_before_indexes_still_goes_by_the_permanent_address(self) -> None:
        """A claim a previous hostnic recorded (no interface index in it) is
        restored after an upgrade: a copy of the MAC wearing the transit name
        while the NIC is in its container is still not the NIC."""
        src = self.join().src_name
        self.host.dockerd_moves_in(src, SANDBOX, "192.168.7.10")
        claim = self.core.state.claims[EP]
        assert claim.original is not None
        self.call(self.core.ledger.put_claim(claim, attrs.evolve(
            claim, original=attrs.evolve(claim.original, index=None))))
        self.core = self.new_core()  # the upgraded hostnic
        copy = self.host.add(src, MAC1, mtu=1280)  # no permanent address
        self.leave()
        self.delete_endpoint()
        self.assertEqual((copy.name, copy.mtu), (src, 1280))
        self.assertEqual(self.durable().claims[EP].phase, Phase.RELEASING)

    def test_a_virtual_nics_mac_on_another_device_is_not_the_nic(self) -> None:
        # No permanent address on either: the index it was recorded with says.
        virtual = self.host.add("ens5", MAC2, up=True)
        self.create_network(NET2, hostnic_mac=MAC2)
        self.create_endpoint(EP2, NET2)
        self.host.add("hn" + EP2[:13], MAC2, up=True)
        message = self.refused(self.core.lend(lend_nic(join_body(EP2, NET2))), NicUnavailable)
        self.assertIn(f"is not NIC {MAC2}", message)
        self.assertEqual((virtual.name, virtual.up), ("ens5", True))

    def test_a_retried_join_proves_the_link_it_renamed(self) -> None:
        """A Join cut short after the rename is retried: the NIC wears the
        transit name already, and is proven by its permanent address."""
        self.assertEqual(self.join().src_name, self.transit)
        self.nic1.mac = "02:00:00:00:5a:02"  # an administrator changed it meanwhile
        self.assertEqual(self.join().src_name, self.transit)

    def test_a_link_taking_the_name_while_the_nic_is_away_is_left_alone(self) -> None:
        src = self.join().src_name
        self.host.dockerd_moves_in(src, SANDBOX, "192.168.7.10")
        squatter = self.host.add(src, "02:00:00:00:5a:03", mtu=1400)  # a link event too
        self.leave()
        self.delete_endpoint()  # the NIC is still away: nothing to restore yet
        self.core.settle_all()
        self.reactor.advance(120)
        self.assertEqual((squatter.name, squatter.mtu, squatter.up), (src, 1400, False))
        self.assertEqual(self.durable().claims[EP].phase, Phase.RELEASING)
        self.host.kernel_returns(MAC1)  # the container's namespace goes: the NIC is home
        self.assert_home_as_before()
        self.assertEqual(self.durable().claims, {})
        self.assertEqual(squatter.name, src)


class ReleasingSurvivesRestartTests(LendingTestCase):
    def test_a_nic_away_at_delete_is_restored_when_it_returns_after_a_restart(self) -> None:
        src = self.join().src_name
        self.host.dockerd_moves_in(src, SANDBOX, "192.168.7.10")
        self.leave()
        self.delete_endpoint()  # dockerd could not move it back
        self.assertEqual(self.durable().claims[EP].phase, Phase.RELEASING)
        self.core = self.new_core()
        self.host.kernel_returns(MAC1)
        self.assert_home_as_before()
        self.assertEqual(self.durable().claims, {})
        self.assertEqual(self.host.known(NicRef(MAC1))[0].name, "ens4")


class LostLeaveAndDeleteTests(LendingTestCase):
    def test_the_nic_is_given_back_once_the_container_is_gone(self) -> None:
        """hostnic restarted during both Leave and DeleteEndpoint: dockerd's
        retries came without bodies, and dockerd went on and removed the
        container. The empty DeleteEndpoint settles every claim; this one's
        namespace is still there at that moment, so it is looked at again
        until the namespace is gone, then given back (no restart needed)."""
        src = self.join().src_name
        self.host.dockerd_moves_in(src, SANDBOX, "192.168.7.10")
        self.now += 3600  # the container runs for an hour
        self.host.dockerd_moves_back(MAC1, src)  # the container stops; its Leave is lost
        self.core.settle_all()  # its DeleteEndpoint came without a body
        self.assertEqual(self.core.state.claims[EP].phase, Phase.JOINED)
        self.host.live_namespaces.discard(SANDBOX)  # dockerd removes the namespace
        self.reactor.advance(120)
        self.assertNotIn(EP, self.durable().claims)
        self.assert_home_as_before()


class ContainerNotStartedYetTests(LendingTestCase):
    """dockerd makes a container's namespace file (the SandboxKey) only when
    it starts the container, after Join. A thorough settle in that window (a
    bodyless DeleteEndpoint's settle_all, a retry) once gave the NIC back,
    and the container's start failed: "failed to add interface hn... to
    sandbox: Link not found" (seen in CI, ten containers started at once)."""

    def setUp(self) -> None:
        super().setUp()
        self.host.live_namespaces.clear()  # no container has started

    def test_a_thorough_settle_leaves_a_nic_whose_container_is_starting(self) -> None:
        src = self.join().src_name
        self.core.settle_all()
        self.reactor.advance(30)  # retries come and go within the window
        self.assertEqual(self.nic1.name, src)
        self.assertEqual(self.core.state.claims[EP].phase, Phase.JOINED)
        self.host.dockerd_moves_in(src, SANDBOX, "192.168.7.10")  # the start goes on

    def test_past_the_window_a_nic_home_without_its_container_is_given_back(self) -> None:
        """The same NIC, home under its transit name, but its container has
        come and gone (dockerd brought it back, its Leave and Delete lost):
        released once the claim is older than any container start."""
        src = self.join().src_name
        self.host.dockerd_moves_in(src, SANDBOX, "192.168.7.10")
        self.host.dockerd_moves_back(MAC1, src)
        self.host.live_namespaces.discard(SANDBOX)
        self.core.settle_all()
        self.assertEqual(self.core.state.claims[EP].phase, Phase.JOINED)  # too young to tell
        self.now += 61
        self.reactor.advance(60)  # the retry settle_all left behind
        self.assertNotIn(EP, self.core.state.claims)
        self.assertEqual(self.nic1.state(), self.before)
