"""The core's CNI attachments (hostnic.core.attachments) over the fake host:
ADD moves a recorded NIC into the handed namespace and configures it, a
failed step undoes every earlier one, DEL brings it home and restores it
whatever is already gone, and Docker endpoints and attachments share one
set of claims."""

from __future__ import annotations

from typing import Any

import attrs
from twisted.internet.defer import Deferred

from hostnic.api.libnetwork import define_network
from hostnic.core.commands import (AttachNic, CheckAttachment, CollectAttachments, DetachNic,
                                   InsideConfig, NicChoice)
from hostnic.errors import HostError, NicUnavailable, PoolExhausted, UnknownObject
from hostnic.state.model import AF_INET, Address, Attachment, NicRef, Phase, Route
from tests.fakes import DeadHost, DeadStore, FakeSandbox
from tests.helpers import (EP, MAC1, MAC2, CoreTestCase, claim_request, endpoint_body,
                           network_body)

POD, POD2 = "/var/run/netns/cni-1", "/var/run/netns/cni-2"


def handed(key: str = POD) -> FakeSandbox:
    """The namespace at ``key`` as a request hands it over (each its own)."""
    return FakeSandbox(key)
ATT = Attachment("tenant", "c" * 64, "net1")
ATT2 = Attachment("tenant", "d" * 64, "net1")
STATIC = InsideConfig(addresses=(Address(AF_INET, "10.8.0.5", 24),), gateway4="10.8.0.1",
                      routes=(Route(AF_INET, None, 0), Route(AF_INET, "10.9.0.0", 16)))


def attach(attachment: Attachment = ATT, key: str = POD, **kwargs: Any) -> AttachNic:
    kwargs.setdefault("choice", NicChoice(macs=(MAC1,)))
    kwargs.setdefault("config", STATIC)
    return AttachNic(attachment=attachment, sandbox=handed(key), **kwargs)


class AttachTests(CoreTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.nic = self.host.add("ens4", MAC1, mtu=1500, up=True,
                                 addresses=[Address(AF_INET, "192.168.9.4", 24)])
        self.nic.sysctls["ipv4/arp_ignore"] = "2"
        self.original = self.nic.state()

    def inside(self) -> tuple[str, str, int, bool, list[str], list[tuple[Any, ...]]]:
        link = self.nic
        return (link.where, link.name, link.mtu, link.up, [a.cidr for a in link.addresses],
                [(r.dst, r.dst_len, r.gateway) for r in link.routes])

    def assert_home_as_recorded(self) -> None:
        self.assertEqual(self.nic.where, "host")
        self.assertEqual(attrs.evolve(self.nic.state(), index=None),
                         attrs.evolve(self.original, index=None))

    def test_add_moves_the_recorded_nic_in_and_configures_it(self) -> None:
        violations = self.watch_record_before_touch()
        attached = self.call(self.core.attach(attach(mtu=1400)))
        self.assertEqual(violations, [])
        self.assertEqual(self.inside(), (POD, "net1", 1400, True, ["10.8.0.5/24"],
                                         [(None, 0, "10.8.0.1"), ("10.9.0.0", 16, "10.8.0.1")]))
        self.assertEqual((attached.mac, attached.ifname, attached.mtu, attached.sandbox),
                         (MAC1, "net1", 1400, POD))
        claim = self.durable().claims[ATT.endpoint_id]
        self.assertEqual((claim.phase, claim.attachment, claim.sandbox_key),
                         (Phase.JOINED, ATT, POD))
        self.assertEqual(claim.original and claim.original.name, "ens4")

    def test_del_brings_it_home_as_recorded_and_releases_it(self) -> None:
        self.call(self.core.attach(attach()))
        self.call(self.core.detach(DetachNic(ATT, handed())))
        self.assert_home_as_recorded()
        self.assertEqual(self.durable().claims, {})
        # Again, and for something never held: nothing to do, no error.
        self.call(self.core.detach(DetachNic(ATT, handed())))
        self.call(self.core.detach(DetachNic(ATT2)))

    def test_del_after_the_namespace_died_restores_what_the_kernel_returned(self) -> None:
        self.call(self.core.attach(attach()))
        self.host.kernel_returns(self.nic)  # home as net1, down and bare
        self.call(self.core.detach(DetachNic(ATT)))  # no namespace to hand over
        self.assert_home_as_recorded()
        self.assertEqual(self.durable().claims, {})

    def test_a_failed_step_undoes_every_earlier_one(self) -> None:
        for step in ("move_into", "configure_in"):
            self.host.fail[step] = HostError(f"{step} failed")
            self.assertIn(f"{step} failed", self.refused(self.core.attach(attach()),
                                                         HostError))
            self.assert_home_as_recorded()
            self.assertEqual(self.durable().claims, {}, step)

    def test_a_name_taken_inside_is_refused_and_nothing_is_kept(self) -> None:
        self.host.add_inside(POD, "net1", "02:00:00:00:00:77")
        self.assertIn("net1", self.refused(self.core.attach(attach()), HostError))
        self.assert_home_as_recorded()
        self.assertEqual(self.durable().claims, {})

    def test_a_gateway_asks_for_no_route(self) -> None:
        # (CNI: only the result's routes are made; on a pod's second network a
        # default route of its own would take the pod's, or fail as present)
        self.call(self.core.attach(attach(config=attrs.evolve(STATIC, routes=()))))
        self.assertEqual(self.inside()[5], [])

    def test_adopt_mode_carries_the_nics_own_configuration(self) -> None:
        self.nic.routes.append(Route(AF_INET, None, 0, "192.168.9.1"))
        self.original = self.nic.state()
        self.call(self.core.attach(attach(adopt=True, config=InsideConfig())))
        self.assertEqual(self.inside()[4:], (["192.168.9.4/24"], [(None, 0, "192.168.9.1")]))
        self.call(self.core.detach(DetachNic(ATT, handed())))
        self.assert_home_as_recorded()

    def test_an_add_repeated_gives_back_what_the_first_left(self) -> None:
        self.call(self.core.attach(attach()))
        self.call(self.core.attach(attach()))
        self.assertEqual(self.inside()[:2], (POD, "net1"))
        self.assertEqual(list(self.core.state.claims), [ATT.endpoint_id])

    def test_a_crash_between_any_two_steps_leaves_a_claim_del_gives_back(self) -> None:
        # The process dies as it asks the host for a step (the step never
        # happens); after the restart, the runtime's DEL gives the NIC back.
        for step, adding in (("locate", True), ("inspect", True), ("rename", True),
                             ("move_into", True), ("configure_in", True),
                             ("bring_home", False), ("restore", False)):
            with self.subTest(step=step):
                if not adding:
                    self.call(self.core.attach(attach()))
                paused: list[Deferred[None]] = []

                def pause(call: str, arg: Any, step: str = step) -> Deferred[None] | None:
                    if call != step:
                        return None
                    paused.append(Deferred())
                    return paused[-1]
                self.host.pause = pause
                cut = Deferred.fromCoroutine(
                    self.core.attach(attach()) if adding
                    else self.core.detach(DetachNic(ATT, handed())))
                self.assertNoResult(cut)
                self.assertIn(step, [call for call, _ in self.host.calls])
                self.host.pause = None
                dead, self.core = self.core, self.new_core()
                # What the dead process was doing unwinds against dead stubs
                # (as in test_properties), never touching the live host again.
                dead.retries.stop()
                dead.retries.reactor = None
                dead.host = dead.lender.host = DeadHost()  # type: ignore[assignment]
                dead.ledger.store = DeadStore()
                for d in paused:
                    d.errback(HostError("this process has died"))
                self.failureResultOf(cut)
                self.call(self.core.detach(DetachNic(ATT, handed())))
                self.assert_home_as_recorded()
                self.assertEqual(self.durable().claims, {})
                self.host.calls.clear()

    def test_an_entry_not_found_does_not_refuse_a_free_nic(self) -> None:
        # (a pool entry whose NIC is away, or gone, while another is free)
        choice = NicChoice(macs=(MAC1,), names=("nope0",))
        self.assertEqual(self.call(self.core.attach(attach(choice=choice))).mac, MAC1)
        # None free: the holders are named; none found: why.
        self.assertIn(f"by container {'c' * 12} as net1", self.refused(
            self.core.attach(attach(ATT2, POD2, choice=choice)), PoolExhausted))
        self.assertEqual(self.refused(self.core.attach(attach(
            ATT2, POD2, choice=NicChoice(names=("nope0",)))), NicUnavailable),
            "there is no interface nope0 in the host network namespace")

    def test_del_handed_another_namespace_still_finds_the_nic_in_the_held_one(self) -> None:
        # (ctr's /proc/PID/ns/net names another process's namespace once the PID is reused)
        request = attach()
        self.call(self.core.attach(request))
        self.call(self.core.detach(DetachNic(ATT, handed("/proc/4242/ns/net"))))
        self.assert_home_as_recorded()
        self.assertTrue(request.sandbox.closed)
        self.assertEqual(self.durable().claims, {})

    def test_a_nic_named_by_device_and_away_names_its_holder(self) -> None:
        self.call(self.core.attach(attach(choice=NicChoice(names=("ens4",)))))
        message = self.refused(self.core.attach(attach(ATT2, POD2, choice=NicChoice(
            names=("ens4",)))), PoolExhausted)
        self.assertIn(f"by container {'c' * 12} as net1", message)

    def test_a_nic_whose_mac_changed_is_still_the_claimed_one(self) -> None:
        self.nic.perm = MAC1  # a physical NIC: its permanent address
        self.create_network(hostnic_mac=MAC1)
        self.create_endpoint(EP)  # Docker holds it, at home, not yet joined
        self.nic.mac = "02:00:00:00:00:66"  # then something rewrites its MAC
        message = self.refused(self.core.attach(attach(choice=NicChoice(
            macs=("02:00:00:00:00:66",)))), PoolExhausted)
        self.assertIn(f"by endpoint {EP[:12]}", message)
        self.assertEqual(list(self.core.state.claims), [EP])

    def test_a_nic_the_kernel_returns_after_its_pod_died_is_released_without_del(self) -> None:
        self.call(self.core.attach(attach()))
        self.host.kernel_returns(self.nic)  # the pod died; its DEL never came
        self.assert_home_as_recorded()
        self.assertEqual(self.durable().claims, {})
        # The namespace it held is let go at the next ADD.
        self.call(self.core.attach(attach(ATT2)))
        self.assertEqual(list(self.core.attachments.held), [ATT2.endpoint_id])

    def test_an_operators_release_brings_the_nic_home_from_the_held_namespace(self) -> None:
        request = attach()
        self.call(self.core.attach(request))
        released = self.call(self.core.release(NicRef(MAC1)))
        self.assertEqual((released.found, released.restored), (True, True))
        self.assert_home_as_recorded()
        self.assertTrue(request.sandbox.closed)
        self.assertEqual(self.durable().claims, {})

    def test_gc_goes_on_past_an_attachment_it_cannot_detach(self) -> None:
        self.host.add("ens5", MAC2)
        both = NicChoice(macs=(MAC1, MAC2))
        self.call(self.core.attach(attach(ATT, POD, choice=both)))
        self.call(self.core.attach(attach(ATT2, POD2, choice=both)))
        self.host.fail["bring_home"] = HostError("bring_home failed")
        self.assertIn("bring_home failed", self.refused(self.core.collect_attachments(
            CollectAttachments("tenant", frozenset())), HostError))
        left = [c.attachment for c in self.durable().claims.values()
                if c.phase is Phase.JOINED or c.phase is Phase.RELEASING]
        self.assertEqual(len(left), 1)  # the other one was detached

    def test_check_names_what_differs(self) -> None:
        self.call(self.core.attach(attach(mtu=1400)))
        check = CheckAttachment(ATT, handed(), 1400, STATIC)
        self.assertEqual(self.call(self.core.check_attachment(check)), [])
        self.nic.addresses.clear()
        self.nic.mtu = 1500
        self.assertEqual(self.call(self.core.check_attachment(check)),
                         ["MTU 1500, not 1400", "address 10.8.0.5/24 is missing"])
        self.assertIn("holds no attachment", self.refused(self.core.check_attachment(
            CheckAttachment(ATT2, handed())), UnknownObject))

    def test_gc_detaches_what_the_runtime_no_longer_knows(self) -> None:
        self.host.add("ens5", MAC2)
        both = NicChoice(macs=(MAC1, MAC2))
        self.call(self.core.attach(attach(ATT, POD, choice=both)))
        self.call(self.core.attach(attach(ATT2, POD2, choice=both)))
        gone = self.call(self.core.collect_attachments(
            CollectAttachments("tenant", frozenset({(ATT2.container_id, "net1")}))))
        self.assertEqual(gone, [ATT])
        # Brought home from the namespace its ADD was handed, and restored.
        self.assert_home_as_recorded()
        self.assertEqual([c.attachment for c in self.durable().claims.values()], [ATT2])

    def test_the_namespace_add_was_handed_is_held_until_del(self) -> None:
        # (containerd's ctr calls DEL with no CNI_NETNS once the task is gone)
        request = attach()
        self.call(self.core.attach(request))
        self.assertFalse(request.sandbox.closed)
        self.call(self.core.detach(DetachNic(ATT)))
        self.assert_home_as_recorded()
        self.assertTrue(request.sandbox.closed)
        self.assertEqual(self.durable().claims, {})
        # A stop lets go of what is held.
        again = attach()
        self.call(self.core.attach(again))
        assert self.daemon is not None
        self.daemon.halt()
        self.assertTrue(again.sandbox.closed)

    def test_after_a_restart_a_nic_the_kernel_returns_is_given_back(self) -> None:
        self.call(self.core.attach(attach()))
        self.core = self.new_core()  # nothing held any more
        self.call(self.core.detach(DetachNic(ATT)))  # the namespace is gone
        self.assertEqual(self.durable().claims[ATT.endpoint_id].phase, Phase.RELEASING)
        self.host.kernel_returns(self.nic)  # a physical NIC comes home by itself
        self.assert_home_as_recorded()
        self.assertEqual(self.durable().claims, {})


class SharedPoolTests(CoreTestCase):
    """Docker endpoints and CNI attachments hold NICs of one set of claims."""

    def setUp(self) -> None:
        super().setUp()
        self.host.add("ens4", MAC1)

    def test_a_nic_a_docker_endpoint_holds_is_refused_to_a_pod_naming_the_holder(self) -> None:
        self.create_network(hostnic_mac=MAC1)
        self.create_endpoint(EP)
        message = self.refused(self.core.attach(attach()), PoolExhausted)
        self.assertIn(f"{MAC1} (ens4) by endpoint {EP[:12]}", message)
        self.assertEqual(list(self.core.state.claims), [EP])

    def test_a_nic_a_pod_holds_is_refused_to_docker_naming_the_holder(self) -> None:
        self.create_network(hostnic_mac=MAC1)  # one pool for both: allowed while free
        self.call(self.core.attach(attach()))
        message = self.refused(self.core.claim(claim_request(endpoint_body(EP))),
                               PoolExhausted)
        self.assertIn(f"by container {'c' * 12} as net1 (CNI network 'tenant')", message)

    def test_a_pod_holding_a_nic_blocks_a_new_docker_network_on_it(self) -> None:
        self.call(self.core.attach(attach()))
        message = self.refused(self.core.define_network(define_network(
            network_body(hostnic_mac=MAC1))), NicUnavailable)
        self.assertIn(f"still held by container {'c' * 12} as net1", message)
