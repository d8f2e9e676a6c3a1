"""The driver API as dockerd sees it, through Klein with no socket."""

from __future__ import annotations

import json
from typing import Any

from treq.testing import StubTreq
from twisted.internet.defer import fail

from tests.helpers import EP, MAC1, NET, SANDBOX, CoreTestCase, endpoint_body, network_body

URL = "http://plugin/"


class DriverTests(CoreTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.host.add("ens4", MAC1)
        assert self.daemon is not None
        self.calls = self.daemon.driver.calls
        self.treq = StubTreq(self.daemon.driver.app.resource())

    def post(self, method: str, body: Any = None, raw: bytes | None = None,
             verb: str = "POST") -> tuple[int, Any]:
        data = raw if raw is not None else (b"" if body is None else json.dumps(body).encode())
        response = self.successResultOf(self.treq.request(verb, URL + method, data=data))
        content = self.successResultOf(response.content())
        return response.code, json.loads(content)

    def test_handshake_with_empty_bodies(self) -> None:
        self.assertEqual(self.post("Plugin.Activate"), (200, {"Implements": ["NetworkDriver"]}))
        code, caps = self.post("NetworkDriver.GetCapabilities")
        self.assertEqual((code, caps["Scope"], caps["ConnectivityScope"]), (200, "local", "global"))
        self.assertEqual(self.post("NetworkDriver.GwAllocCheck", {"Options": {}}),
                         (200, {"SkipIPv4": True, "SkipIPv6": True}))

    def test_lifecycle_through_the_api(self) -> None:
        self.assertEqual(self.post("NetworkDriver.CreateNetwork",
                                   network_body(hostnic_mac=MAC1)), (200, {}))
        self.assertEqual(self.post("NetworkDriver.CreateEndpoint", endpoint_body()),
                         (200, {"Interface": {"MacAddress": MAC1}}))
        ref = {"NetworkID": NET, "EndpointID": EP}
        code, joined = self.post("NetworkDriver.Join", {**ref, "SandboxKey": "/x", "Options": None})
        self.assertEqual((code, joined["InterfaceName"]["DstPrefix"], joined["Gateway"]),
                         (200, "eth", "192.168.7.1"))
        self.assertTrue(joined["DisableGatewayService"])
        for method in ("ProgramExternalConnectivity", "RevokeExternalConnectivity"):
            self.assertEqual(self.post(f"NetworkDriver.{method}", {**ref, "Options": {}}), (200, {}))
        self.assertEqual(self.post("NetworkDriver.EndpointOperInfo", ref)[1]["Value"]["hostnic_mac"], MAC1)
        self.assertEqual(self.post("NetworkDriver.Leave", ref), (200, {}))
        self.host.dockerd_moves_back(MAC1, joined["InterfaceName"]["SrcName"])
        self.assertEqual(self.post("NetworkDriver.DeleteEndpoint", ref), (200, {}))
        self.assertEqual(self.post("NetworkDriver.DeleteNetwork", {"NetworkID": NET}), (200, {}))
        self.assertEqual(self.calls.stats["NetworkDriver.Join"].count, 1)

    def test_a_mac_address_dockerd_filled_is_not_answered_again(self) -> None:
        """--mac-address fills Interface.MacAddress: returning the field, even
        unchanged, fails the endpoint in dockerd."""
        self.post("NetworkDriver.CreateNetwork", network_body(hostnic_mac=MAC1))
        self.assertEqual(self.post("NetworkDriver.CreateEndpoint", endpoint_body(mac=MAC1)),
                         (200, {}))
        self.assertEqual(self.core.state.claims[EP].mac, MAC1)

    def test_swarm_and_discovery_methods_answer(self) -> None:
        self.assertEqual(self.post("NetworkDriver.AllocateNetwork", {"NetworkID": NET}),
                         (200, {"Options": {}}))
        for method in ("FreeNetwork", "DiscoverNew", "DiscoverDelete"):
            self.assertEqual(self.post(f"NetworkDriver.{method}", {"NetworkID": NET}), (200, {}))

    def test_cleanup_calls_for_unknown_ids_succeed(self) -> None:
        ref = {"NetworkID": NET, "EndpointID": EP}
        self.assertEqual(self.post("NetworkDriver.Leave", ref), (200, {}))
        self.assertEqual(self.post("NetworkDriver.DeleteEndpoint", ref), (200, {}))
        self.assertEqual(self.post("NetworkDriver.DeleteNetwork", {"NetworkID": NET}), (200, {}))
        self.assertEqual(self.post("NetworkDriver.EndpointOperInfo", ref), (200, {"Value": {}}))

    def test_refusals_are_json_sentences(self) -> None:
        cases = [
            ("NetworkDriver.CreateNetwork", network_body(), 200,
             "hostnic needs the NIC to hand out: give -o hostnic_mac=MAC, -o "
             "hostnic_name=IFNAME or -o hostnic_pci=PCI (several may be comma-separated)"),
            ("NetworkDriver.CreateNetwork", network_body(hostnic_mac="52:54:00:zz:00:01"), 200,
             "'52:54:00:zz:00:01' is not a MAC address"),
            ("NetworkDriver.CreateNetwork", network_body(hostnic_mac=MAC1, colour="red"), 200,
             "hostnic does not know the option colour; it takes hostnic_mac=MAC[,MAC...], "
             "hostnic_name=IFNAME[,IFNAME...] and hostnic_pci=PCI[,PCI...]"),
            ("NetworkDriver.CreateNetwork", {"NetworkID": 7}, 400,
             "NetworkID must be a str, not int"),
            ("NetworkDriver.CreateNetwork", {"NetworkID": NET, "Options": []}, 400,
             "Options must be a dict, not list"),
            ("NetworkDriver.CreateNetwork", {"NetworkID": NET, "Options": {
                "com.docker.network.generic": {"hostnic_mac": 5}}}, 200,
             "option hostnic_mac must be a string, not int"),
            ("NetworkDriver.CreateEndpoint", {"NetworkID": NET}, 400, "the request has no EndpointID"),
            ("NetworkDriver.Join", [1, 2], 400, "the request body must be a JSON object"),
            ("NetworkDriver.Join", None, 400,
             "NetworkDriver.Join came without its body: dockerd resends a call that way when "
             "hostnic restarted while answering it, and hostnic cannot tell which network or "
             "endpoint it meant; run the docker command again"),
            ("NetworkDriver.Nope", {}, 404, "hostnic does not implement 'NetworkDriver.Nope'"),
        ]
        for method, body, code, message in cases:
            self.assertEqual(self.post(method, body), (code, {"Err": message}), method)
        self.assertEqual(self.core.state.networks, {})

    def test_malformed_bodies(self) -> None:
        self.assertEqual(self.post("NetworkDriver.CreateNetwork", raw=b"{not json"),
                         (400, {"Err": "the request body is not JSON"}))
        self.assertEqual(self.post("NetworkDriver.CreateNetwork", raw=b"\xff\xfe"),
                         (400, {"Err": "the request body is not JSON"}))
        big = json.dumps({"NetworkID": NET, "pad": "x" * (10 << 20)}).encode()
        self.assertEqual(self.post("NetworkDriver.CreateNetwork", raw=big),
                         (400, {"Err": "the request body is larger than 1048576 bytes"}))
        self.assertEqual(self.post("Plugin.Activate", verb="GET"),
                         (405, {"Err": "Plugin.Activate takes POST, not GET"}))
        self.assertEqual(self.post("", {}), (404, {"Err": "hostnic does not implement ''"}))
        self.assertEqual(self.core.state.networks, {})
        self.assertEqual(self.calls.stats["(unknown)"].count, 1)

    def test_a_bodyless_delete_settles_every_claim(self) -> None:
        # dockerd's retry of a DeleteEndpoint a restart cut short has no body;
        # the endpoint it meant had left and its NIC is home: release it.
        self.post("NetworkDriver.CreateNetwork", network_body(hostnic_mac=MAC1))
        self.post("NetworkDriver.CreateEndpoint", endpoint_body())
        ref = {"NetworkID": NET, "EndpointID": EP}
        self.post("NetworkDriver.Join", {**ref, "SandboxKey": SANDBOX})
        self.post("NetworkDriver.Leave", ref)
        self.assertEqual(self.post("NetworkDriver.DeleteEndpoint", raw=b"")[0], 400)
        self.assertEqual(self.core.state.claims, {})
        self.assertEqual(self.host.by_mac(MAC1).name, "ens4")

    def test_hostile_bodies_get_short_refusals(self) -> None:
        self.assertEqual(self.post("NetworkDriver.CreateNetwork", raw=b"[" * 100_000),
                         (400, {"Err": "the request body is nested too deeply"}))
        code, answer = self.post("NetworkDriver.CreateNetwork",
                                 network_body(hostnic_mac=MAC1, **{"k" * 1_000_000: "v"}))
        self.assertEqual(code, 200)
        self.assertLess(len(answer["Err"]), 300)
        self.assertIn("(1000000 characters)", answer["Err"])
        code, answer = self.post("NetworkDriver.CreateNetwork",
                                 network_body(hostnic_mac="a" * 1_000_000))
        self.assertLess(len(answer["Err"]), 200)
        for event in self.calls.last(10):
            self.assertLess(len(event.get("error") or ""), 300)
        self.assertEqual(self.core.state.networks, {})

    def test_unexpected_failure_is_a_json_500(self) -> None:
        self.host.gate = fail(RuntimeError("kaput"))  # the host breaks mid-request
        code, answer = self.post("NetworkDriver.CreateNetwork", network_body(hostnic_mac=MAC1))
        self.assertEqual(code, 500)
        self.assertEqual(answer["Err"], "internal error in hostnic (RuntimeError: kaput); "
                                        "see the hostnic log")
        self.flushLoggedErrors(RuntimeError)
