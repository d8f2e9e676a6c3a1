from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from hostnic.api.libnetwork import CreateEndpoint, define_network
from hostnic.errors import BadRequest, InvalidOption
from hostnic.state.model import normalize_mac
from tests.helpers import MAC1, NET, endpoint_body, network_body


class MacTests(SynchronousTestCase):
    def test_common_notations_are_one_nic(self) -> None:
        for text in ("52:54:00:E1:D9:E1", "52-54-00-e1-d9-e1", "5254.00e1.d9e1",
                     "525400e1d9e1", " 52:54:00:e1:d9:e1 "):
            self.assertEqual(normalize_mac(text), MAC1, text)

    def test_not_macs(self) -> None:
        for text in ("", "12", "52:54:00:e1:d9", "52:54:00:e1:d9:e1:00:01", "zz:zz:zz:zz:zz:zz",
                     "52:54:00", "52:54:00:e1", "5254:00e1:d9e1", "52:54-00:e1:d9:e1"):
            self.assertRaises(InvalidOption, normalize_mac, text)


class CreateNetworkParseTests(SynchronousTestCase):
    def test_options_and_ip_data(self) -> None:
        body = network_body(hostnic_mac=f"{MAC1}, 52-54-00-e1-d9-e1", hostnic_name="ens5")
        body["IPv6Data"] = [{"Pool": "fd00:1::/64", "Gateway": "fd00:1::1/64"}]
        parsed = define_network(body)
        self.assertEqual(parsed.macs, (MAC1,))
        self.assertEqual(parsed.names, ("ens5",))
        self.assertEqual((parsed.gateway4, parsed.gateway6), ("192.168.7.1", "fd00:1::1"))
        self.assertEqual(parsed.subnets, ("192.168.7.0/24", "fd00:1::/64"))

    def test_null_options_and_absent_gateway(self) -> None:
        self.assertRaises(InvalidOption, define_network, {"NetworkID": NET, "Options": None})
        body = network_body(hostnic_mac=MAC1)
        del body["IPv4Data"][0]["Gateway"]
        self.assertIsNone(define_network(body).gateway4)

    def test_refusals(self) -> None:
        self.assertRaises(InvalidOption, define_network,
                          network_body(hostnic_mac=MAC1, **{"com.docker.network.driver.mtu": "1400"}))
        self.assertRaises(InvalidOption, define_network, network_body(hostnic_name="a/b"))
        self.assertRaises(InvalidOption, define_network, network_body(hostnic_name="x" * 16))
        self.assertRaises(BadRequest, define_network, {"NetworkID": "../../etc"})
        bad_gw = network_body(hostnic_mac=MAC1)
        bad_gw["IPv4Data"][0]["Gateway"] = "nonsense"
        self.assertRaises(BadRequest, define_network, bad_gw)


class CreateEndpointParseTests(SynchronousTestCase):
    def test_pin_sources(self) -> None:
        self.assertEqual(CreateEndpoint.parse(endpoint_body(
            hostnic_mac="5254.00e1.d9e1")).command.pinned_mac, MAC1)
        parsed = CreateEndpoint.parse(endpoint_body(mac=MAC1))
        self.assertEqual((parsed.command.pinned_mac, parsed.interface_has_mac), (MAC1, True))
        # dockerd's own keys pass; unknown hostnic_ keys do not.
        CreateEndpoint.parse(endpoint_body(**{"com.docker.network.endpoint.exposedports": ""}))
        self.assertRaises(InvalidOption, CreateEndpoint.parse, endpoint_body(hostnic_foo="1"))
        self.assertRaises(InvalidOption, CreateEndpoint.parse,
                          endpoint_body(mac=MAC1, hostnic_mac="02:00:00:00:00:01"))
