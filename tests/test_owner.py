"""Unit tests of the core over a faithful fake host namespace."""

from __future__ import annotations

import attrs
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.logger import globalLogPublisher

from hostnic.api.libnetwork import define_network
from hostnic.core.commands import EndpointKey, LendNic
from hostnic.errors import HostnicError, PoolExhausted, StoreError
from hostnic.state.model import Address, Phase
from tests.helpers import claim_request
from tests.sched import Scheduler, gated
from tests.fakes import run_now
from tests.helpers import (EP, EP2, EP3, MAC1, MAC2, MAC3, NET, NET2, SANDBOX, CoreTestCase,
                           endpoint_body, network_body)


class CreateNetworkTests(CoreTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.nic1 = self.host.add("ens4", MAC1)
        self.nic2 = self.host.add("ens5", MAC2)

    def test_pool_from_macs_and_names(self) -> None:
        self.create_network(hostnic_mac="52-54-00-E1-D9-E1", hostnic_name="ens5")
        network = self.core.state.networks[NET]
        self.assertEqual(network.macs, [MAC1, MAC2])
        self.assertEqual(network.gateway4, "192.168.7.1")
        self.assertEqual([n["mac"] for n in self.on_disk()["networks"][0]["pool"]], [MAC1, MAC2])

    def test_same_nic_in_another_notation_is_refused(self) -> None:
        self.create_network(hostnic_mac=MAC1)
        message = self.refused(self.core.define_network(
            define_network(network_body(NET2, hostnic_mac="5254.00e1.d9e1"))))
        self.assertEqual(message, f"NIC {MAC1} (ens4) is already in hostnic network "
                                  f"{NET[:12]}; a NIC can serve one network only")
        self.assertEqual(list(self.core.state.networks), [NET])

    def test_name_resolving_to_a_pooled_mac_is_refused(self) -> None:
        self.create_network(hostnic_mac=MAC1)
        message = self.refused(self.core.define_network(
            define_network(network_body(NET2, hostnic_name="ens4"))))
        self.assertIn("already in hostnic network", message)

    def test_unknown_name_and_absent_mac(self) -> None:
        self.assertEqual(
            self.refused(self.core.define_network(
                define_network(network_body(hostnic_name="nope0")))),
            "there is no interface nope0 in the host network namespace")
        self.assertEqual(
            self.refused(self.core.define_network(
                define_network(network_body(hostnic_mac="02:00:00:00:00:99")))),
            "there is no NIC with MAC 02:00:00:00:00:99 in the host network namespace")
        self.assertEqual(self.core.state.networks, {})

    def test_loopback_and_default_route_are_refused(self) -> None:
        self.host.add("lo", "00:00:00:00:00:00", loopback=True)
        self.assertEqual(
            self.refused(self.core.define_network(
                define_network(network_body(hostnic_name="lo")))),
            "lo is the loopback interface")
        self.host.default_route_indexes.add(self.nic2.index)
        message = self.refused(self.core.define_network(
            define_network(network_body(hostnic_mac=f"{MAC1},{MAC2}"))))
        self.assertIn(f"NIC {MAC2} (ens5) carries the host's default route", message)
        self.assertEqual(self.core.state.networks, {})

    def test_mac_on_several_links_is_refused(self) -> None:
        self.host.add("ens4.100", MAC1, kind="vlan")
        message = self.refused(self.core.define_network(
            define_network(network_body(hostnic_mac=MAC1))))
        self.assertIn("carried by several interfaces (ens4, ens4.100)", message)

    def test_virtual_nic_is_accepted_with_a_warning(self) -> None:
        self.host.add("veth9", MAC3, kind="veth")
        events: list[dict] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        self.create_network(hostnic_mac=MAC3)
        warnings = [e for e in events if e.get("kind") == "veth"]
        self.assertEqual(len(warnings), 1)
        self.assertEqual(warnings[0]["log_level"].name, "warn")

    def test_concurrent_creates_for_one_nic_exactly_one_wins(self) -> None:
        gate: Deferred[None] = Deferred()
        self.host.gate = gate
        first = Deferred.fromCoroutine(self.core.define_network(
            define_network(network_body(NET, hostnic_mac=MAC1))))
        second = Deferred.fromCoroutine(self.core.define_network(
            define_network(network_body(NET2, hostnic_mac=MAC1.upper()))))
        self.assertNoResult(first)
        self.assertNoResult(second)
        self.host.gate = None
        gate.callback(None)
        self.assertIsNone(self.successResultOf(first))
        self.assertIn("already in hostnic network", str(self.failureResultOf(second).value))
        self.assertEqual(list(self.core.state.networks), [NET])

    def test_delete_network_is_idempotent(self) -> None:
        self.create_network(hostnic_mac=MAC1)
        self.call(self.core.drop_network(NET))
        self.call(self.core.drop_network(NET))
        self.assertEqual(self.on_disk()["networks"], [])
        self.create_network(NET2, hostnic_mac=MAC1)  # the NIC is free again


class EndpointTests(CoreTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.nic1 = self.host.add("ens4", MAC1, mtu=9000, up=True,
                                  addresses=[Address(2, "10.1.1.5", 24)])
        self.nic2 = self.host.add("ens5", MAC2)
        self.create_network(hostnic_mac=f"{MAC1},{MAC2}")

    def test_pool_serves_one_container_per_nic_then_refuses(self) -> None:
        self.assertEqual(self.create_endpoint(EP).mac, MAC1)
        self.assertEqual(self.create_endpoint(EP2).mac, MAC2)
        message = self.refused(self.core.claim(
            claim_request(endpoint_body(EP3))), PoolExhausted)
        self.assertEqual(message, f"network {NET[:12]} has 2 NICs, all in use ({MAC1} (ens4) "
                                  f"by endpoint {EP[:12]}; {MAC2} (ens5) by endpoint "
                                  f"{EP2[:12]}); add NICs to its pool or stop a container")
        self.assertEqual(sorted(self.core.state.claims), [EP, EP2])

    def test_pinning_by_option_and_by_mac_address(self) -> None:
        self.assertEqual(self.create_endpoint(EP, hostnic_mac="52:54:00:E1:D9:E2").mac, MAC2)
        self.assertEqual(self.create_endpoint(EP2, mac=MAC1).mac, MAC1)
        self.assertEqual(self.core.state.claims[EP2].mac, MAC1)

    def test_pinning_refusals(self) -> None:
        self.assertEqual(
            self.refused(self.core.claim(claim_request(
                endpoint_body(EP, mac="02:00:00:00:00:01")))),
            f"NIC 02:00:00:00:00:01 is not in the pool of network {NET[:12]} "
            f"({MAC1}, {MAC2})")
        self.create_endpoint(EP, hostnic_mac=MAC2)
        self.assertEqual(
            self.refused(self.core.claim(claim_request(
                endpoint_body(EP2, hostnic_mac=MAC2)))),
            f"NIC {MAC2} (ens5) of network {NET[:12]} is in use by endpoint {EP[:12]}")

    def test_racing_for_the_last_nic_exactly_one_wins(self) -> None:
        self.create_endpoint(EP)
        # Every host call and every store write is a point where a call waits
        # for the scheduler: the two creates really interleave, in 40 orders.
        for seed in range(40):
            scheduler = Scheduler()
            self.host.pause = scheduler.point
            self.threads.run = gated(scheduler)
            results = [Deferred.fromCoroutine(self.core.claim(
                claim_request(endpoint_body(e)))) for e in (EP2, EP3)]
            scheduler.run_randomly(seed)
            outcomes = []
            for d in results:
                d.addBoth(outcomes.append)
            winners = [o for o in outcomes if not hasattr(o, "check")]
            losers = [o for o in outcomes if hasattr(o, "check") and o.check(PoolExhausted)]
            self.assertEqual(([w.mac for w in winners], len(losers)), ([MAC2], 1), seed)
            self.assertEqual(sorted(c.mac for c in self.durable().claims.values()),
                             [MAC1, MAC2], seed)
            self.host.pause = None
            self.threads.run = run_now
            winner = next(e for e in (EP2, EP3) if e in self.core.state.claims)
            self.delete_endpoint(winner)

    def test_free_nics_missing_from_host_are_skipped(self) -> None:
        self.nic1.where = "elsewhere"
        self.assertEqual(self.create_endpoint(EP).mac, MAC2)

    def test_join_records_state_before_lending_and_answers(self) -> None:
        self.create_endpoint(EP)
        violations = self.watch_record_before_touch()
        answer = self.join(EP)
        transit = "hn" + EP[:13]
        self.assertEqual((answer.src_name, answer.gateway4, answer.gateway6),
                         (transit, "192.168.7.1", None))
        self.assertEqual(self.nic1.name, transit)
        claim = self.durable().claims[EP]
        self.assertEqual(claim.phase, Phase.JOINED)
        self.assertEqual(claim.original, attrs.evolve(self.nic1.state(), name="ens4", up=True,
                                                      recorded_at=1000.0))
        self.assertEqual((claim.original.mtu, claim.original.addresses),
                         (9000, (Address(2, "10.1.1.5", 24),)))
        # The disk held the record at every change the lend made to the NIC.
        self.assertEqual(violations, [])
        self.assertIn(("rename", (self.nic1.index, transit)), self.host.calls)

    def test_transit_name_avoids_a_name_inside_the_container(self) -> None:
        self.nic1.name = "eth0"
        self.create_endpoint(EP)
        src = self.join(EP).src_name
        # The sandbox already has an eth0 from another network.
        self.host.add("eth0", "02:00:00:00:00:aa", where="/run/netns/c1")
        moved = self.host.dockerd_moves_in(src, "/run/netns/c1", "192.168.7.10")
        self.assertEqual(moved.name, "eth1")

    def test_full_lifecycle_gives_the_nic_back_as_it_was(self) -> None:
        self.create_endpoint(EP)
        src = self.join(EP).src_name
        self.host.dockerd_moves_in(src, "/run/netns/c1", "192.168.7.10")
        self.leave(EP)
        self.assertEqual(self.core.state.claims[EP].phase, Phase.LEFT)
        self.host.dockerd_moves_back(MAC1, src)
        self.delete_endpoint(EP)
        self.assertEqual((self.nic1.name, self.nic1.mtu, self.nic1.up, self.nic1.addresses),
                         ("ens4", 9000, True, [Address(2, "10.1.1.5", 24)]))
        self.assertEqual(self.core.state.claims, {})
        self.assertEqual(self.on_disk()["claims"], [])
        self.assertEqual(self.create_endpoint(EP2).mac, MAC1)

    def test_unknown_endpoint_calls(self) -> None:
        self.leave(EP3)
        self.delete_endpoint(EP3)
        self.assertIsNone(self.core.claim_of(EndpointKey(NET, EP3)))
        self.assertIn("holds no endpoint", self.refused(
            self.core.lend(LendNic(EndpointKey(NET, EP3), None))))

    def test_endpoint_of_unknown_network(self) -> None:
        message = self.refused(self.core.claim(
            claim_request(endpoint_body(EP, NET2))))
        self.assertEqual(message, f"hostnic holds no network {NET2[:12]}; recreate it "
                                  f"with docker network create -d hostnic")

    def test_nic_away_at_delete_is_restored_when_it_comes_back(self) -> None:
        self.create_endpoint(EP)
        src = self.join(EP).src_name
        self.host.dockerd_moves_in(src, "/run/netns/c1", "192.168.7.10")
        self.leave(EP)
        self.delete_endpoint(EP)  # dockerd failed to move it back
        self.assertEqual(self.core.state.claims[EP].phase, Phase.RELEASING)
        self.call(self.core.drop_network(NET))
        self.assertIn("still held", self.refused(self.core.define_network(
            define_network(network_body(NET2, hostnic_mac=MAC1)))))
        self.host.kernel_returns(MAC1)  # the namespace died: NIC home as eth0
        self.assertEqual(self.nic1.name, "ens4")
        self.assertTrue(self.nic1.up)
        self.assertEqual(self.core.state.claims, {})

    def test_failed_save_loses_nothing(self) -> None:
        def disk_full(*args: object) -> None:
            raise OSError(28, "No space left on device")
        self.threads.run = lambda f, *a: maybeDeferred(disk_full)
        message = self.refused(self.core.claim(
            claim_request(endpoint_body(EP))), StoreError)
        self.assertIn("No space left on device", message)
        self.assertEqual(self.core.state.claims, {})


class RestartTests(CoreTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.nic1 = self.host.add("ens4", MAC1, up=True, addresses=[Address(2, "10.1.1.5", 24)])
        self.create_network(hostnic_mac=MAC1)
        self.create_endpoint(EP)
        self.src = self.join(EP).src_name
        self.host.dockerd_moves_in(self.src, SANDBOX, "192.168.7.10")

    def test_state_survives_a_restart(self) -> None:
        core = self.new_core()
        self.assertEqual(core.state, self.core.state)

    def test_kernel_returned_nic_is_restored_and_released_at_start(self) -> None:
        self.host.add("eth0", "02:00:00:00:00:bb")  # host already has an eth0
        self.host.detach()  # hostnic is down...
        self.host.kernel_returns(MAC1)  # ...when the container's namespace goes
        self.assertEqual(self.nic1.name, f"dev{self.nic1.index}")
        core = self.new_core()
        self.assertEqual((self.nic1.name, self.nic1.up), ("ens4", True))
        self.assertEqual(core.last_reconciliation["released"], [MAC1])
        # The container is gone, and with it dockerd's use of the NIC.
        self.assertEqual(core.state.claims, {})

    def test_kernel_returned_nic_is_restored_at_once_and_kept_for_dockerd(self) -> None:
        self.host.kernel_returns(MAC1)  # a link event, while hostnic runs
        self.assertEqual((self.nic1.name, self.nic1.up, self.nic1.addresses),
                         ("ens4", True, [Address(2, "10.1.1.5", 24)]))
        # dockerd still owns the endpoint: the claim stays until it deletes it,
        # and the admin view shows the restore that happened meanwhile.
        self.assertEqual(self.core.state.claims[EP].phase, Phase.JOINED)
        assert self.daemon is not None
        admin = self.daemon.admin
        [endpoint] = self.call(admin.endpoints_list())
        self.assertEqual((endpoint["last_restore"]["found_as"],
                          endpoint["last_restore"]["problems"]), ("eth0", []))
        self.leave(EP)
        self.delete_endpoint(EP)
        self.assertEqual(self.core.state.claims, {})
        self.assertEqual(self.nic1.name, "ens4")

    def test_left_endpoint_whose_delete_was_lost_is_released_at_start(self) -> None:
        self.leave(EP)
        self.host.dockerd_moves_back(MAC1, self.src)
        core = self.new_core()
        self.assertEqual(core.state.claims, {})
        self.assertEqual(self.nic1.name, "ens4")

    def test_nic_still_in_container_is_left_alone(self) -> None:
        core = self.new_core()
        self.assertEqual(core.last_reconciliation["absent"], [MAC1])
        self.assertEqual(self.nic1.where, SANDBOX)

    def test_requests_wait_for_reconciliation(self) -> None:
        gate: Deferred[None] = Deferred()
        self.host.gate = gate
        self.crash()
        self.daemon = self.build()
        core = self.daemon.core
        starting = Deferred.fromCoroutine(self.daemon.start())
        waiting = Deferred.fromCoroutine(core.drop_network(NET))
        self.assertNoResult(waiting)
        self.host.gate = None
        gate.callback(None)
        self.successResultOf(starting)
        self.successResultOf(waiting)
        self.assertNotIn(NET, core.state.networks)


class ErrorsAreSentencesTests(CoreTestCase):
    def test_every_refusal_is_a_hostnic_error(self) -> None:
        self.host.add("ens4", MAC1)
        for body in (network_body(hostnic_mac="zz"), network_body(),
                     network_body(hostnic_mac=MAC1, bogus="1")):
            try:
                define_network(body)
            except HostnicError as e:
                self.assertTrue(e.message)
            else:
                self.fail(f"{body} was accepted")
