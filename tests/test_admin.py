"""The admin API: every method and every JSON-RPC error, through Klein with no socket."""

from __future__ import annotations

import json
import os
from typing import Any

from treq.testing import StubTreq
from twisted.internet.defer import fail

from hostnic.state.model import Address
from tests.helpers import EP, EP2, MAC1, MAC2, MAC3, NET, CoreTestCase

URL = "http://admin/"
SANDBOX = "/var/run/docker/netns/abc"


class AdminTestCase(CoreTestCase):

    def setUp(self) -> None:
        super().setUp()
        self.host.add("lo", "00:00:00:00:00:00", loopback=True)
        self.mgmt = self.host.add("ens3", "52:54:00:00:00:03", up=True,
                                  addresses=[Address(2, "192.0.2.2", 24)])
        self.host.default_route_indexes.add(self.mgmt.index)
        self.nic1 = self.host.add("ens4", MAC1, up=True, addresses=[Address(2, "10.1.1.5", 24)])
        self.nic2 = self.host.add("ens5", MAC2)
        self.host.add("veth7", MAC3, kind="veth")
        self.host.pci["ens4"] = "0000:00:04.0"
        self.create_network(hostnic_mac=f"{MAC1},{MAC2}")
        self.create_endpoint(EP)
        src = self.join(EP).src_name
        self.host.dockerd_moves_in(src, SANDBOX, "192.168.7.10")
        self.now += 1000.0  # since this daemon started
        assert self.daemon is not None
        self.admin = self.daemon.admin
        self.treq = StubTreq(self.admin.app.resource())

    def http(self, verb: str, path: str, raw: bytes = b"",
             headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        response = self.successResultOf(self.treq.request(
            verb, URL + path, data=raw, headers=headers or {}))
        return response.code, self.successResultOf(response.content())

    def rpc(self, payload: Any, raw: bytes | None = None) -> Any:
        code, body = self.http("POST", "rpc", raw if raw is not None else json.dumps(payload).encode())
        self.assertEqual(code, 200)
        return json.loads(body)

    def result(self, method: str, params: Any = None) -> Any:
        request = {"jsonrpc": "2.0", "id": 7, "method": method}
        if params is not None:
            request["params"] = params
        answer = self.rpc(request)
        self.assertEqual(answer.get("id"), 7)
        self.assertNotIn("error", answer, answer)
        return answer["result"]

    def error(self, payload: Any, raw: bytes | None = None) -> tuple[int, str]:
        answer = self.rpc(payload, raw)
        return answer["error"]["code"], answer["error"]["message"]


class MethodTests(AdminTestCase):
    def test_status(self) -> None:
        status = self.result("status")
        self.assertEqual({k: status[k] for k in ("pid", "uptime", "networks", "endpoints_count",
                                                 "nics_claimed", "nics_free", "state_dir")},
                         {"pid": os.getpid(), "uptime": 1000.0, "networks": 1,
                          "endpoints_count": 1, "nics_claimed": 1, "nics_free": 1,
                          "state_dir": self.state_dir})
        self.assertEqual(status["endpoints"], {"driver": "unix:/d", "admin": "unix:/a"})
        self.assertEqual(status["last_reconciliation"]["claims"], 0)

    def test_networks(self) -> None:
        [network] = self.result("networks.list")
        self.assertEqual(network["pool"], [
            {"mac": MAC1, "perm_mac": None, "pci": None, "name": None, "endpoint": EP,
             "adopted": None},
            {"mac": MAC2, "perm_mac": None, "pci": None, "name": "ens5", "endpoint": None,
             "adopted": None}])
        self.assertEqual(network["mode"], "ipam")
        self.assertEqual((network["gateway4"], network["subnets"]), ("192.168.7.1", ["192.168.7.0/24"]))
        self.assertEqual(self.result("networks.get", {"id": NET[:12]}), network)
        self.assertEqual(self.result("networks.get", [NET]), network)
        self.assertEqual(self.error({"jsonrpc": "2.0", "id": 1, "method": "networks.get",
                                     "params": {"id": "ffff"}}),
                         (-32001, "hostnic holds no network 'ffff'"))

    def test_endpoints(self) -> None:
        [endpoint] = self.result("endpoints.list")
        self.assertEqual((endpoint["endpoint"], endpoint["mac"], endpoint["phase"],
                          endpoint["sandbox_key"], endpoint["nic_in_host"]),
                         (EP, MAC1, "joined", "/var/run/docker/netns/abc", False))
        original = endpoint["original"]
        self.assertEqual({k: original[k] for k in ("name", "mac", "mtu", "admin", "addresses")},
                         {"name": "ens4", "mac": MAC1, "mtu": 1500, "admin": "up",
                          "addresses": ["10.1.1.5/24"]})
        self.assertEqual(original["sysctls"]["ipv4/rp_filter"], "0")

    def test_cni_attachments_beside_docker_endpoints(self) -> None:
        read, write = os.pipe()
        assert self.daemon is not None
        status, _ = self.call(self.daemon.cni.handle(
            {"env": {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c" * 64, "CNI_IFNAME": "net1",
                     "CNI_NETNS": "/var/run/netns/cni-1"},
             "config": {"cniVersion": "1.0.0", "name": "tenant", "mac": MAC2}}, [read, write]))
        self.assertEqual(status, 0)
        endpoints = {e["owner"]: e for e in self.result("endpoints.list")}
        self.assertEqual(endpoints["docker"]["cni"], None)
        pod = endpoints["cni"]
        self.assertEqual((pod["cni"], pod["mac"], pod["phase"], pod["sandbox_key"]),
                         ({"network": "tenant", "container_id": "c" * 64, "ifname": "net1"},
                          MAC2, "joined", "/var/run/netns/cni-1"))
        self.assertIn("hostnic_cni_attachments 1\n", self.http("GET", "metrics")[1].decode())
        self.assertEqual(self.result("metrics")["CNI.ADD"]["count"], 1)

    def test_nics(self) -> None:
        nics = {n["mac"]: n for n in self.result("nics.list")}
        self.assertEqual({mac: n["status"] for mac, n in nics.items()}, {
            "00:00:00:00:00:00": "loopback", "52:54:00:00:00:03": "management",
            MAC1: "in-container", MAC2: "in-pool", MAC3: "free"})
        self.assertEqual((nics[MAC3]["kind"], nics[MAC3]["driver"]), ("virtual", "veth"))
        self.assertEqual(nics["52:54:00:00:00:03"]["addresses"], ["192.0.2.2/24"])
        self.assertEqual((nics[MAC1]["where"], nics[MAC1]["name"], nics[MAC1]["endpoint"]),
                         (SANDBOX, "ens4", EP))
        self.assertEqual(self.result("nics.get", {"key": "5254.00e1.d9e2"})["name"], "ens5")
        self.assertEqual(self.result("nics.get", {"key": "ens5"})["mac"], MAC2)
        self.assertEqual(self.error({"jsonrpc": "2.0", "id": 1, "method": "nics.get",
                                     "params": {"key": "nope0"}})[0], -32001)
        self.assertEqual(self.error({"jsonrpc": "2.0", "id": 1, "method": "nics.get",
                                     "params": {"key": "a/b"}})[0], -32602)

    def test_events_and_metrics(self) -> None:
        self.core.events.record("NetworkDriver.Join", 0.003, None)
        self.core.events.record("NetworkDriver.Join", 0.2, "refused")
        events = self.result("events.recent", {"limit": 2})
        self.assertEqual([e["kind"] for e in events], ["call", "call"])
        self.assertEqual(events[1]["error"], "refused")
        self.assertEqual(self.result("events.recent")[0]["kind"], "reconciliation")
        metrics = self.result("metrics")["NetworkDriver.Join"]
        self.assertEqual((metrics["count"], metrics["errors"]), (2, 1))
        self.assertIn(["0.005", 1], metrics["buckets"])
        self.assertIn(["+Inf", 2], metrics["buckets"])
        code, text = self.http("GET", "metrics")
        self.assertEqual(code, 200)
        lines = text.decode().splitlines()
        self.assertIn('hostnic_driver_calls_total{method="NetworkDriver.Join"} 2', lines)
        self.assertIn('hostnic_driver_call_duration_seconds_bucket{method="NetworkDriver.Join",'
                      'le="0.25"} 2', lines)
        self.assertIn('hostnic_nics{state="claimed"} 1', lines)

    def test_release(self) -> None:
        code, message = self.error({"jsonrpc": "2.0", "id": 1, "method": "nics.release",
                                    "params": {"mac": MAC1}})
        self.assertEqual(code, -32002)
        self.assertIn("inside the live namespace /var/run/docker/netns/abc", message)
        # The container died but dockerd never deleted the endpoint.
        self.host.live_namespaces.clear()
        self.host.kernel_returns(MAC1)
        released = self.result("nics.release", {"mac": MAC1.upper()})
        self.assertEqual((released["found"], released["restored"]), (True, True))
        self.assertEqual((self.nic1.name, self.nic1.up), ("ens4", True))
        self.assertEqual(self.core.state.claims, {})
        self.assertEqual(self.error({"jsonrpc": "2.0", "id": 1, "method": "nics.release",
                                     "params": [MAC1]}),
                         (-32001, f"NIC {MAC1} is not claimed by any hostnic endpoint"))

    def test_an_operator_removes_a_network_dockerd_does_not_know(self) -> None:
        code, message = self.error({"jsonrpc": "2.0", "id": 1, "method": "networks.delete",
                                    "params": {"id": NET[:12]}})
        self.assertEqual(code, -32002)
        self.assertIn("still has 1 endpoint", message)
        self.host.kernel_returns(MAC1)
        self.result("nics.release", {"mac": MAC1})
        self.assertEqual(self.result("networks.delete", {"id": NET[:12]}),
                         {"id": NET, "freed": [MAC1, MAC2]})
        self.assertEqual(self.core.state.networks, {})
        self.assertEqual(self.durable().networks, {})

    def test_release_of_a_nic_that_is_gone(self) -> None:
        self.host.live_namespaces.clear()  # a virtual NIC deleted with its namespace
        del self.host.links[self.nic1.index]
        released = self.result("nics.release", {"mac": MAC1})
        self.assertEqual((released["found"], released["endpoint"]), (False, EP))
        self.create_endpoint(EP2)  # the claim is gone


class ProtocolTests(AdminTestCase):
    def test_standard_errors(self) -> None:
        self.assertEqual(self.error(None, b"{nope")[0], -32700)
        self.assertEqual(self.rpc(None, b"{nope")["id"], None)
        self.assertEqual(self.error([]), (-32600, "Invalid Request: empty batch"))
        self.assertEqual(self.error({"jsonrpc": "1.0", "id": 1, "method": "status"})[0], -32600)
        self.assertEqual(self.error({"jsonrpc": "2.0", "id": 1, "method": 5})[0], -32600)
        self.assertEqual(self.error({"jsonrpc": "2.0", "id": [1], "method": "status"})[0], -32600)
        self.assertEqual(self.error({"jsonrpc": "2.0", "id": 1, "method": "status",
                                     "params": "x"})[0], -32600)
        self.assertEqual(self.error({"jsonrpc": "2.0", "id": 1, "method": "nope"})[0], -32601)
        self.assertEqual(self.error({"jsonrpc": "2.0", "id": 1, "method": "events.recent",
                                     "params": {"limit": "ten"}}),
                         (-32602, "Invalid params for events.recent: limit must be an int"))
        self.assertEqual(self.error({"jsonrpc": "2.0", "id": 1, "method": "networks.get",
                                     "params": {"bogus": 1}})[0], -32602)
        self.assertEqual(self.error({"jsonrpc": "2.0", "id": 1, "method": "events.recent",
                                     "params": {"limit": 0}})[0], -32602)
        self.host.gate = fail(RuntimeError("netlink broke"))
        self.assertEqual(self.error({"jsonrpc": "2.0", "id": 1, "method": "nics.list"}),
                         (-32603, "Internal error: RuntimeError: netlink broke"))
        self.flushLoggedErrors(RuntimeError)

    def test_batch_mixing_good_bad_and_notifications(self) -> None:
        answers = self.rpc([
            {"jsonrpc": "2.0", "id": "a", "method": "status"},
            {"jsonrpc": "2.0", "method": "status"},  # a notification: no answer
            {"jsonrpc": "2.0", "id": "b", "method": "nope"},
            17,
            {"jsonrpc": "2.0", "id": "c", "method": "networks.get", "params": ["ffff"]},
        ])
        self.assertEqual([(a["id"], "result" in a, a.get("error", {}).get("code"))
                          for a in answers],
                         [("a", True, None), ("b", False, -32601), (None, False, -32600),
                          ("c", False, -32001)])

    def test_notifications_alone_get_no_body(self) -> None:
        self.assertEqual(self.http("POST", "rpc", json.dumps(
            {"jsonrpc": "2.0", "method": "status"}).encode()), (204, b""))
        self.assertEqual(self.http("POST", "rpc", json.dumps(
            [{"jsonrpc": "2.0", "method": "status"}]).encode()), (204, b""))

    def test_other_paths_and_huge_bodies(self) -> None:
        code, body = self.http("GET", "rpc")
        self.assertEqual(code, 405)
        code, body = self.http("POST", "nope", b"{}")
        self.assertEqual((code, json.loads(body)["error"]["code"]), (404, -32600))
        code, body = self.http("POST", "rpc", b"[" + b"1," * (1 << 20) + b"1]")
        self.assertEqual(json.loads(body)["error"]["code"], -32600)

    def test_hostile_json(self) -> None:
        # Not JSON to a strict parser: NaN would be echoed as an id nobody can read.
        self.assertEqual(self.error(None, b'{"jsonrpc":"2.0","id":NaN,"method":"status"}')[0],
                         -32700)
        self.assertEqual(self.error(None, b"[" * 100_000)[0], -32700)
        self.assertEqual(self.error({"jsonrpc": "2.0", "id": "x" * 129, "method": "status"})[0],
                         -32600)
        batch = [{"jsonrpc": "2.0", "id": i, "method": "status"} for i in range(65)]
        self.assertEqual(self.error(batch), (-32600, "Invalid Request: a batch of 65 requests; "
                                                     "at most 64 are served in one"))
        self.assertEqual(len(self.rpc(batch[:64])), 64)
        code, message = self.error({"jsonrpc": "2.0", "id": 1, "method": "m" * 1_000_000})
        self.assertEqual(code, -32601)
        self.assertLess(len(message), 400)
        code, message = self.error({"jsonrpc": "2.0", "id": 1, "method": "nics.get",
                                    "params": {"key": "k" * 1_000_000}})
        self.assertLess(len(message), 200)

    def test_bad_input_changes_nothing(self) -> None:
        before = self.core.state
        for raw in (b"{", b"[]", b'{"jsonrpc":"2.0","id":1,"method":"nics.release","params":{}}',
                    b'{"jsonrpc":"2.0","id":1,"method":"nics.release","params":{"mac":"zz"}}'):
            self.http("POST", "rpc", raw)
        self.assertEqual(self.core.state, before)


class TokenTests(AdminTestCase):
    admin_token = b"s3cret"

    def test_requests_without_the_token_get_401_and_no_data(self) -> None:
        body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "status"}).encode()
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            code, answer = self.http("POST", "rpc", body, headers)
            self.assertEqual(code, 401)
            self.assertNotIn(b"pid", answer)
        self.assertEqual(self.http("GET", "metrics")[0], 401)
        for scheme in ("Bearer", "bearer", "BEARER"):  # RFC 7235: case-insensitive
            code, answer = self.http("POST", "rpc", body, {"Authorization": f"{scheme} s3cret"})
            self.assertEqual((code, json.loads(answer)["result"]["pid"]), (200, os.getpid()))
