"""A seeded hostile client against both APIs, through the whole HTTP stack
(GuardedSite, Klein, handlers, core) with no socket.

Each request is malformed in some way a broken or hostile client might
manage: wrong types, missing fields, huge or deeply nested values, NaN,
invalid UTF-8, unknown methods and paths, oversized or chunked bodies,
bogus Authorization headers. Every answer must be JSON, a driver refusal an
``{"Err": ...}`` of bounded length and a JSON-RPC error one of the spec's
codes; no request may reach an unexpected exception (no 500, no -32603, no
logged failure); and the state on disk must be byte-identical afterwards.
"""

from __future__ import annotations

import json
import random
from typing import Any

from twisted.internet.address import UNIXAddress
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from hostnic.api.http import GuardedSite
from tests.helpers import EP, MAC1, NET, CoreTestCase

REQUESTS = 2500


def strict_json(raw: bytes) -> Any:
    """What a JSON parser that follows RFC 8259 reads (no NaN, no Infinity)."""
    def refuse(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")
    return json.loads(raw, parse_constant=refuse)
DRIVER_METHODS = ["Plugin.Activate", "NetworkDriver.GetCapabilities", "NetworkDriver.CreateNetwork",
                  "NetworkDriver.DeleteNetwork", "NetworkDriver.CreateEndpoint",
                  "NetworkDriver.DeleteEndpoint", "NetworkDriver.Join", "NetworkDriver.Leave",
                  "NetworkDriver.EndpointOperInfo", "NetworkDriver.GwAllocCheck",
                  "NetworkDriver.ProgramExternalConnectivity", "NetworkDriver.AllocateNetwork"]
RPC_METHODS = ["status", "networks.list", "networks.get", "endpoints.list", "nics.list",
               "nics.get", "events.recent", "metrics", "nics.release"]


class Garbage:
    """Values a hostile client sends, from a seeded generator."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def choice(self, options: list[Any]) -> Any:
        return self.rng.choice(options)

    TEXTS = ["", "x", "\u00e9\u4e2d\U0001f600", "52:54:00:zz:00:01", "02:42:de:ad:be:ef",
             "eth0", "../../etc", "%s%n", "\0\0", "fd00::1/64", "10.0.0.1/33", "nan", "1" * 64]

    def text(self) -> str:
        kind = self.rng.randrange(len(self.TEXTS) + 3)
        if kind < len(self.TEXTS):
            return self.TEXTS[kind]
        if kind == len(self.TEXTS):
            return "a" * self.rng.choice([64, 65, 1000, 300_000])
        if kind == len(self.TEXTS) + 1:
            return str(self.rng.random())
        return "%064x" % self.rng.getrandbits(256)

    def value(self, depth: int = 0) -> Any:
        kinds = ["text", "number", "bool", "null", "list", "object", "big"]
        kind = self.choice(kinds if depth < 3 else kinds[:4])
        if kind == "text":
            return self.text()
        if kind == "number":
            return self.choice([0, -1, 2 ** 64, 1e308, -0.0, 3.5])
        if kind == "bool":
            return self.choice([True, False])
        if kind == "null":
            return None
        if kind == "list":
            return [self.value(depth + 1) for _ in range(self.rng.randrange(4))]
        if kind == "big":
            return {self.text(): self.text() for _ in range(self.rng.randrange(50))}
        return {self.choice(["NetworkID", "EndpointID", "Options", "Interface", "IPv4Data",
                             "SandboxKey", "MacAddress", "Gateway", "Pool", self.text()]):
                self.value(depth + 1) for _ in range(self.rng.randrange(5))}

    def driver_body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"NetworkID": self.choice([self.text(), "f" * 64, 7, None]),
                                "EndpointID": self.choice([self.text(), "c" * 64, [], None])}
        generic = {self.choice(["hostnic_mac", "hostnic_name", self.text()]): self.value()
                   for _ in range(self.rng.randrange(3))}
        body["Options"] = self.choice([None, {}, {"com.docker.network.generic": generic},
                                       {"com.docker.network.generic": self.value()}, self.value()])
        body["IPv4Data"] = self.choice([[], None, [{"Pool": self.text(), "Gateway": self.text()}],
                                        [self.value()], self.value()])
        body["Interface"] = self.choice([{}, {"MacAddress": self.value(), "Address": self.text()},
                                         self.value()])
        for _ in range(self.rng.randrange(3)):
            body[self.text()] = self.value()
        return body

    def raw_json(self, payload: Any) -> bytes:
        mode = self.rng.randrange(10)
        if mode == 0:
            return b"[" * self.rng.choice([500, 5000, 100_000])
        if mode == 1:
            return b'{"id": NaN, "jsonrpc": "2.0", "method": "status"}'
        if mode == 2:
            return bytes(self.rng.randrange(256) for _ in range(self.rng.randrange(1, 200)))
        if mode == 3:
            return json.dumps(payload)[:-1].encode()
        return json.dumps(payload).encode()

    def rpc(self) -> Any:
        one = lambda: {self.choice(["jsonrpc", self.text()]): self.choice(["2.0", self.value()]),  # noqa: E731
                       "id": self.choice([1, "a", None, self.text(), 1.5, [1], {"a": 1}, True]),
                       "method": self.choice(RPC_METHODS + [self.text(), 5]),
                       "params": self.choice([{}, [], {"mac": self.text()}, [self.text()],
                                              {"limit": self.value()}, {"id": self.text()},
                                              {"key": self.text()}, self.value()])}
        if self.rng.random() < 0.2:
            return [one() for _ in range(self.choice([0, 1, 3, 64, 65, 200]))]
        return one()


class Wire:
    """One connection into a GuardedSite: send bytes, read the answer."""

    def __init__(self, site: GuardedSite) -> None:
        self.transport = StringTransport(hostAddress=UNIXAddress(b"/sock"),
                                         peerAddress=UNIXAddress(None))
        self.protocol = site.buildProtocol(UNIXAddress(b"/peer"))
        assert self.protocol is not None
        self.protocol.makeConnection(self.transport)

    def exchange(self, raw: bytes) -> tuple[int, bytes]:
        self.protocol.dataReceived(raw)
        head, _, body = self.transport.value().partition(b"\r\n\r\n")
        self.protocol.connectionLost(None)  # type: ignore[arg-type]
        status = int(head.split(b" ")[1]) if head else 0
        if b"transfer-encoding: chunked" in head.lower():
            body = dechunk(body)
        return status, body


def dechunk(raw: bytes) -> bytes:
    body = b""
    while raw:
        size, _, raw = raw.partition(b"\r\n")
        length = int(size, 16)
        if length == 0:
            break
        body, raw = body + raw[:length], raw[length + 2:]
    return body


def request(method: str, path: str, body: bytes, headers: dict[str, str],
            chunked: bool = False) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: h"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    if chunked:
        lines.append("Transfer-Encoding: chunked")
        body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    else:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape") + body


class HostileClientTests(CoreTestCase):
    admin_token = b"s3cret"

    def setUp(self) -> None:
        super().setUp()
        self.host.add("ens4", MAC1, up=True)
        self.create_network(hostnic_mac=MAC1)
        self.create_endpoint(EP)
        assert self.daemon is not None
        sites = self.daemon.sites(reactor=Clock())  # as the daemon serves them
        self.driver, self.admin = sites["driver"], sites["admin"]

    def check_driver(self, status: int, body: bytes, what: str) -> None:
        self.assertNotEqual(status, 500, what)
        answer = strict_json(body)
        self.assertIsInstance(answer, dict, what)
        if "Err" in answer:
            self.assertIsInstance(answer["Err"], str, what)
            self.assertLessEqual(len(answer["Err"]), 1024, what)
        self.assertLess(len(body), 4096, what)

    def check_rpc(self, status: int, body: bytes, what: str) -> None:
        if status == 204:
            return
        self.assertIn(status, (200, 401, 404, 405, 413), what)
        answer = strict_json(body)
        for one in answer if isinstance(answer, list) else [answer]:
            self.assertEqual(one["jsonrpc"], "2.0", what)
            if "error" in one:
                self.assertIn(one["error"]["code"],
                              (-32700, -32600, -32601, -32602, -32001, -32002), what)
                self.assertLessEqual(len(one["error"]["message"]), 1024, what)
        self.assertLess(len(body), 1 << 20, what)

    def test_a_seeded_hostile_client_gets_json_refusals_and_changes_nothing(self) -> None:
        before = self.disk_bytes()
        garbage = Garbage(seed=20261129)
        sent = {"driver": 0, "admin": 0}
        for i in range(REQUESTS):
            if i % 3:
                method = garbage.choice(DRIVER_METHODS + ["NetworkDriver.Nope", garbage.text()])
                body = garbage.raw_json(garbage.driver_body())
                verb = garbage.choice(["POST"] * 8 + ["GET", "PUT"])
                path = "/" + method.encode("utf-8", "surrogateescape").decode("latin-1")[:2000]
                raw = request(verb, path, body, {}, chunked=garbage.rng.random() < 0.1)
                status, answer = Wire(self.driver).exchange(raw)
                if status:  # a request line too long is dropped by Twisted: nothing to read
                    self.check_driver(status, answer, f"request {i}: {raw[:300]!r}")
                sent["driver"] += 1
            else:
                auth = garbage.choice(["Bearer s3cret", "bearer s3cret", "BEARER  s3cret",
                                       "Bearer wrong", "s3cret", "", "Basic czNjcmV0"])
                headers = {"Authorization": auth} if auth else {}
                path = garbage.choice(["/rpc"] * 6 + ["/metrics", "/", "/x" * 500])
                raw = request(garbage.choice(["POST"] * 6 + ["GET"]), path,
                              garbage.raw_json(garbage.rpc()), headers)
                status, answer = Wire(self.admin).exchange(raw)
                if path == "/metrics" and status == 200:
                    continue
                self.check_rpc(status, answer, f"request {i}: {raw[:300]!r}")
                sent["admin"] += 1
        self.assertGreater(min(sent.values()), 500)
        # Every driver call was answered or refused: none holds or waits for a place.
        self.assertEqual((self.driver.in_flight, len(self.driver.waiting)), (0, 0))
        self.assertEqual(self.disk_bytes(), before)
        self.assertEqual(set(self.core.state.networks), {NET})
        self.assertEqual(set(self.core.state.claims), {EP})
        # What the event log keeps of refused requests is bounded too.
        for event in self.core.events.last(self.core.events.size):
            self.assertLess(len(json.dumps(event)), 2048)


class KeptAliveTests(CoreTestCase):
    """dockerd's plugin client keeps its connection open between calls:
    each answer goes out whole with a Content-Length (never chunked), and
    the connection stays open for the next call."""

    def test_two_calls_on_one_connection(self) -> None:
        self.host.add("ens4", MAC1, up=True)
        assert self.daemon is not None
        sites = self.daemon.sites(reactor=Clock())
        for site, path, body, headers in (
                (sites["driver"], "/NetworkDriver.GetCapabilities", b"", {}),
                (sites["admin"], "/rpc", b'{"jsonrpc": "2.0", "id": 1, "method": "status"}',
                 {"Authorization": "Bearer s3cret"})):
            wire = Wire(site)
            for _ in range(2):
                wire.transport.clear()
                wire.protocol.dataReceived(request("POST", path, body, headers))
                head, _, answer = wire.transport.value().partition(b"\r\n\r\n")
                fields = dict(line.split(b": ", 1) for line in head.split(b"\r\n")[1:])
                self.assertNotIn(b"Transfer-Encoding", fields, head)
                self.assertEqual(int(fields[b"Content-Length"]), len(answer), head)
                self.assertIsInstance(strict_json(answer), dict)
                self.assertFalse(wire.transport.disconnecting)

    admin_token = b"s3cret"


class HeldAnswerTests(SynchronousTestCase):
    """An answer is held until finish(): one without a body still sends its
    head, and a route that fails after writing answers the 500 alone."""

    def site(self) -> GuardedSite:
        from klein import Klein
        from hostnic.api.http import driver_refusal
        app = Klein()

        @app.route("/empty")
        def empty(request: Any) -> None:
            request.setResponseCode(204)

        @app.route("/nothing")
        def nothing(request: Any) -> None:
            return None

        @app.route("/half")
        def half(request: Any) -> bytes:
            request.write(b'{"partial": ')
            raise RuntimeError("failed half way")

        return GuardedSite(app.resource(), driver_refusal, reactor=Clock())

    def answer(self, path: str) -> tuple[bytes, bytes]:
        wire = Wire(self.site())
        wire.protocol.dataReceived(request("GET", path, b"", {}))
        head, _, body = wire.transport.value().partition(b"\r\n\r\n")
        return head, body

    def test_an_answer_without_a_body_sends_its_head(self) -> None:
        head, body = self.answer("/empty")
        self.assertTrue(head.startswith(b"HTTP/1.1 204"), head)
        self.assertEqual(body, b"")
        head, body = self.answer("/nothing")
        self.assertTrue(head.startswith(b"HTTP/1.1 200"), head)
        self.assertIn(b"Content-Length: 0", head)

    def test_a_route_that_fails_after_writing_answers_the_error_alone(self) -> None:
        head, body = self.answer("/half")
        self.assertTrue(head.startswith(b"HTTP/1.1 500"), head)
        length = int(dict(line.split(b": ", 1) for line in head.split(b"\r\n")[1:])
                     [b"Content-Length"])
        self.assertEqual(len(body), length)
        self.assertIn("Err", strict_json(body))
        self.flushLoggedErrors(RuntimeError)
