"""Adopt mode (--ipam-driver null: the NIC's own configuration), giving back
everything a NIC had, and the guards for NICs other devices depend on."""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from hostnic.api.libnetwork import define_network, lend_nic
from hostnic.errors import NicUnavailable
from hostnic.state.model import Address, Route
from tests.helpers import claim_request
from hostnic.kernel.record import adoption
from tests.fakes import V4, V6
from tests.helpers import EP, EP2, MAC1, MAC2, NET, NET2, SANDBOX, CoreTestCase, endpoint_body

NOPREFIXROUTE, LEASE = 0x200, 3600


def adopt_body(network_id: str = NET, ipv6: bool = True, **generic: str) -> dict[str, Any]:
    """What dockerd 20.10 and 26.1 send for --ipam-driver null."""
    return {"NetworkID": network_id,
            "Options": {"com.docker.network.generic": generic,
                        "com.docker.network.enable_ipv6": ipv6},
            "IPv4Data": [{"AddressSpace": "null", "Pool": "0.0.0.0/0"}], "IPv6Data": []}


def null_ipam_endpoint(endpoint_id: str = EP, network_id: str = NET) -> dict[str, Any]:
    return {"NetworkID": network_id, "EndpointID": endpoint_id,
            "Interface": {"Address": "", "AddressIPv6": "", "MacAddress": ""}, "Options": {}}


class AdoptTestCase(CoreTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.nic = self.host.add(
            "ens5", MAC1, up=True, mtu=9001,
            addresses=[Address(V4, "10.20.0.7", 24, valid=LEASE, preferred=LEASE),
                       Address(V4, "10.20.0.8", 24, flags=0x01),  # a secondary
                       Address(V6, "fd20::7", 64),
                       Address(V6, "fe80::7", 64, scope=253)],
            routes=[Route(V4, None, 0, "10.20.0.1", priority=200),  # a second default
                    Route(V6, None, 0, "fd20::1", priority=1024),
                    Route(V4, "10.50.0.0", 16, "10.20.0.254"),
                    Route(V4, None, 0, "10.20.0.2", table=100)])  # policy table

    def create(self, ipv6: bool = True) -> None:
        self.call(self.core.define_network(define_network(
            adopt_body(ipv6=ipv6, hostnic_name="ens5"))))

    def create_endpoint_answer(self, endpoint_id: str = EP) -> Any:
        return self.call(self.core.claim(claim_request(
            null_ipam_endpoint(endpoint_id))))


class AdoptionTests(SynchronousTestCase):
    def test_only_settled_global_addresses_that_are_not_privacy_ones_are_handed_over(
            self) -> None:
        addresses = [Address(V6, "fd20::aaaa", 64, flags=0x01),  # a privacy address
                     Address(V6, "fd20::bbbb", 64, flags=0x40),  # still tentative
                     Address(V6, "fd20::cccc", 64, flags=0x20),  # deprecated
                     Address(V6, "fe80::7", 64, scope=253),  # link-local
                     Address(V6, "fd20::7", 64, flags=0x100),  # stable, SLAAC-managed
                     Address(V4, "10.20.0.7", 24),
                     Address(V4, "10.20.0.8", 24, flags=0x01)]  # IPv4: a secondary
        adopted = adoption(addresses, [], 5.0)
        self.assertEqual((str(adopted.address4), str(adopted.address6), adopted.read_at),
                         ("10.20.0.7/24", "fd20::7/64 (managetempaddr)", 5.0))
        self.assertEqual([a.cidr for a in adopted.not_carried], ["10.20.0.8/24"])


class AdoptModeTests(AdoptTestCase):
    def test_the_container_gets_the_nics_own_configuration(self) -> None:
        self.create()
        network = self.durable().networks[NET]
        self.assertTrue(network.adopt and network.ipv6)
        self.assertEqual((network.gateway4, network.subnets), (None, ()))
        created = self.create_endpoint_answer()
        self.assertEqual((created.address4, created.address6), ("10.20.0.7/24", "fd20::7/64"))
        lent = self.join()
        self.assertEqual((lent.gateway4, lent.gateway6), ("10.20.0.1", "fd20::1"))
        self.assertEqual([str(r) for r in lent.routes], ["10.50.0.0/16 via 10.20.0.254"])
        adopted = self.durable().claims[EP].adopted
        assert adopted is not None
        self.assertEqual([str(a) for a in adopted.not_carried], ["10.20.0.8/24"])

    def test_ipv6_is_carried_although_dockerd_cannot_say_ipv6(self) -> None:
        # dockerd refuses --ipv6 with --ipam-driver null: the body never says it.
        self.create(ipv6=False)
        created = self.create_endpoint_answer()
        self.assertEqual((created.address4, created.address6), ("10.20.0.7/24", "fd20::7/64"))
        lent = self.join()
        self.assertEqual((lent.gateway4, lent.gateway6), ("10.20.0.1", "fd20::1"))

    def test_the_configuration_is_read_again_while_the_nic_is_home(self) -> None:
        self.create()
        self.nic.addresses[0] = Address(V4, "10.20.0.9", 24)  # a new lease meanwhile
        self.assertEqual(self.create_endpoint_answer().address4, "10.20.0.9/24")
        adopted = self.durable().networks[NET].adopted[MAC1]
        self.assertEqual(str(adopted.address4), "10.20.0.9/24")
        self.assertEqual(str(self.durable().claims[EP].adopted.address4),  # type: ignore
                         "10.20.0.9/24")

    def test_it_survives_lending_and_restarts(self) -> None:
        self.create()
        for endpoint in (EP, EP2):
            self.create_endpoint_answer(endpoint)
            src = self.join(endpoint).src_name
            self.host.dockerd_moves_in(src, SANDBOX, "10.20.0.7")
            self.leave(endpoint)
            self.host.dockerd_moves_back(MAC1, src)
            self.delete_endpoint(endpoint)
            self.core = self.new_core()
        self.assertEqual(self.create_endpoint_answer().address4, "10.20.0.7/24")
        self.assertEqual(self.join().gateway4, "10.20.0.1")

    def test_a_nic_with_nothing_to_adopt_is_refused_at_endpoint_creation(self) -> None:
        self.nic.addresses = [Address(V6, "fe80::7", 64, scope=253)]
        self.create()  # accepted: its DHCP client may not be done yet
        message = self.refused(self.core.claim(claim_request(
            null_ipam_endpoint())), NicUnavailable)
        self.assertIn("has no global address to adopt", message)
        self.assertEqual(self.durable().claims, {})

    def test_a_retried_create_for_docker_ipam_is_a_different_network(self) -> None:
        self.create()
        message = self.refused(self.core.define_network(define_network(
            {**adopt_body(hostnic_name="ens5"), "IPv4Data": [
                {"Pool": "10.20.0.0/24", "Gateway": "10.20.0.1/24"}]})))
        self.assertIn("adopt mode (--ipam-driver null) not asked", message)

    def test_dockerds_own_addresses_are_never_answered_again(self) -> None:
        """The core answers the NIC's own addresses; the driver answers only
        those dockerd left empty (returning a field it filled fails the
        endpoint)."""
        import json
        from treq.testing import StubTreq
        self.create()
        assert self.daemon is not None
        body = endpoint_body()  # dockerd gave an IPv4 address, no IPv6 and no MAC
        response = self.successResultOf(StubTreq(self.daemon.driver.app.resource()).post(
            "http://plugin/NetworkDriver.CreateEndpoint", data=json.dumps(body).encode()))
        answer = json.loads(self.successResultOf(response.content()))
        claimed = self.core.state.claims[EP]
        self.assertEqual(answer, {"Interface": {"MacAddress": claimed.mac,
                                                "AddressIPv6": "fd20::7/64"}})


class ManagementGuardTests(AdoptTestCase):
    def test_a_tenant_nic_with_a_default_route_of_its_own_is_accepted(self) -> None:
        mgmt = self.host.add("ens3", MAC2, up=True)
        self.host.default_route_indexes.add(mgmt.index)  # the host's best default
        self.create()  # ens5's defaults (metric 200, table 100) do not stop it
        self.assertIn("carries the host's default route", self.refused(
            self.core.define_network(define_network(adopt_body(NET2, hostnic_name="ens3")))))


class GiveBackEverythingTests(CoreTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.nic = self.host.add(
            "ens5", MAC1, up=True, mtu=9001, txqlen=2000, group=7, alias="tenant uplink",
            altnames=("tenant0",),
            addresses=[Address(V4, "10.20.0.7", 24, flags=NOPREFIXROUTE, label="ens5:t"),
                       Address(V4, "10.20.0.9", 24, valid=LEASE, preferred=LEASE)],
            routes=[Route(V4, "10.20.0.0", 24), Route(V4, "10.60.0.0", 16, "10.20.0.1",
                                                      table=100, priority=5)])
        self.nic.sysctls.update({"ipv4/rp_filter": "2", "ipv6/accept_ra": "0"})
        self.before = self.nic.state()
        self.create_network(hostnic_mac=MAC1)

    def lend_and_return(self, seconds: float = 0) -> None:
        self.create_endpoint(EP)
        src = self.join(EP).src_name
        self.host.dockerd_moves_in(src, SANDBOX, "192.168.7.10")
        self.nic.alias, self.nic.txqlen = "changed by the container", 10
        self.host.now = lambda: 1000.0 + seconds
        self.leave(EP)
        self.host.dockerd_moves_back(MAC1, src)
        self.delete_endpoint(EP)

    def test_routes_sysctls_flags_alias_altnames_and_txqueuelen_come_back(self) -> None:
        self.lend_and_return(seconds=600)
        after = self.nic.state()
        self.assertEqual(after.routes, self.before.routes)
        self.assertEqual(dict(after.sysctls)["ipv4/rp_filter"], "2")
        self.assertEqual(dict(after.sysctls)["ipv6/accept_ra"], "0")
        self.assertEqual((after.alias, after.altnames, after.txqlen, after.group),
                         ("tenant uplink", ("tenant0",), 2000, 7))
        self.assertEqual(after.addresses[0], self.before.addresses[0])  # flags and label too
        self.assertEqual(after.addresses[1].valid, LEASE - 600)  # the lease went on ageing
        self.assertEqual((after.name, after.mtu, after.up), ("ens5", 9001, True))

    def test_what_cannot_be_restored_is_named(self) -> None:
        self.host.read_only_sysctls.add("ipv4/rp_filter")
        self.lend_and_return(seconds=LEASE + 1)  # the lease ran out meanwhile
        problems = self.core.lender.restores[MAC1]["problems"]
        self.assertEqual(len(problems), 2, problems)
        self.assertIn("sysctl ipv4/rp_filter=2", problems[0])
        self.assertIn("10.20.0.9/24", problems[1])
        self.assertIn("lease ran out", problems[1])
        # Named where an operator looks, not only in the log.
        assert self.daemon is not None
        admin = self.daemon.admin
        self.assertEqual(self.call(admin.nics_get("ens5"))["last_restore"]["problems"], problems)
        self.flushLoggedErrors()


class GuardTests(CoreTestCase):
    def test_a_bridge_port_is_refused(self) -> None:
        bridge = self.host.add("br0", "02:00:00:00:00:b0", kind="bridge")
        self.host.add("ens5", MAC1, master=bridge.index)
        message = self.refused(self.core.define_network(define_network(
            adopt_body(hostnic_name="ens5"))), NicUnavailable)
        self.assertEqual(message, f"NIC {MAC1} (ens5) is a port of bridge br0; lending it "
                                  f"would cut br0 off")

    def test_a_nic_named_by_the_mac_its_bridge_or_vlan_took_is_refused_for_that(self) -> None:
        # A bridge takes its first port's MAC, a VLAN its parent's: by MAC the
        # NIC is several links, and the sentence says why it cannot be lent.
        bridge = self.host.add("br0", MAC1, kind="bridge")
        self.host.add("ens5", MAC1, master=bridge.index)
        nic = self.host.add("ens6", MAC2)
        self.host.add("ens6.7", MAC2, kind="vlan", link=nic.index)
        for mac, expected in ((MAC1, "(ens5) is a port of bridge br0"),
                              (MAC2, "(ens6) carries vlan ens6.7")):
            self.assertIn(expected, self.refused(self.core.define_network(define_network(
                adopt_body(hostnic_mac=mac))), NicUnavailable))
        self.host.add("ens7", "02:00:00:00:00:e0")
        self.host.add("ens8", "02:00:00:00:00:e0")  # unrelated: no NIC to name
        self.assertIn("is carried by several interfaces (ens7, ens8)", self.refused(
            self.core.define_network(define_network(
                adopt_body(hostnic_mac="02:00:00:00:00:e0"))), NicUnavailable))

    def test_a_nic_with_a_macvlan_on_top_is_refused(self) -> None:
        nic = self.host.add("ens5", MAC1)
        self.host.add("mv0", "02:00:00:00:00:c0", kind="macvlan", link=nic.index)
        message = self.refused(self.core.define_network(define_network(
            adopt_body(hostnic_name="ens5"))), NicUnavailable)
        self.assertEqual(message, f"NIC {MAC1} (ens5) carries macvlan mv0; lending it would "
                                  f"cut them off")

    def test_a_nic_enslaved_after_the_network_was_made_is_refused_at_join(self) -> None:
        nic = self.host.add("ens5", MAC1, up=True)
        self.create_network(hostnic_mac=MAC1)
        self.create_endpoint(EP)
        bond = self.host.add("bond0", "02:00:00:00:00:d0", kind="bond")
        nic.master = bond.index
        self.assertIn("is a port of bond bond0", self.refused(
            self.core.lend(lend_nic({"NetworkID": NET, "EndpointID": EP,
                                       "SandboxKey": SANDBOX}))))
        self.assertEqual((nic.name, nic.up), ("ens5", True))
