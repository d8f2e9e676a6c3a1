"""Raw HTTP into the guarded Site: answers are JSON whatever breaks, and a
hostile client is refused before it costs memory, disk or descriptors."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.address import UNIXAddress
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource

from hostnic.api.http import GuardedSite, Limits, NotJSON, driver_refusal, jsonrpc_refusal, loads


class Broken(Resource):
    isLeaf = True

    def render(self, request: object) -> bytes:
        raise RuntimeError("kaput")


class Echo(Resource):
    """Answers with the size of the body it was given."""

    isLeaf = True
    seen: list[int] = []

    def render(self, request: Any) -> bytes:
        body = request.content.read()
        self.seen.append(len(body))
        return json.dumps({"size": len(body)}).encode()


class Client:
    def __init__(self, site: GuardedSite) -> None:
        self.protocol = site.buildProtocol(UNIXAddress(b"/peer"))
        self.transport = StringTransport(hostAddress=UNIXAddress(b"/sock"),
                                         peerAddress=UNIXAddress(None))
        if self.protocol is not None:
            self.protocol.makeConnection(self.transport)

    def send(self, raw: bytes) -> None:
        assert self.protocol is not None
        self.protocol.dataReceived(raw)

    def answer(self) -> tuple[int, Any]:
        head, _, body = self.transport.value().partition(b"\r\n\r\n")
        return int(head.split(b" ")[1]), json.loads(body) if body else None

    def close(self) -> None:
        if self.protocol is not None:
            self.protocol.connectionLost(None)  # type: ignore[arg-type]


class SiteTestCase(SynchronousTestCase):
    def site(self, resource: Resource, refusal: Any = driver_refusal, **limits: Any) -> GuardedSite:
        self.clock = Clock()
        authorize = limits.pop("authorize", None)
        return GuardedSite(resource, refusal, Limits(**limits), authorize=authorize,
                           reactor=self.clock)


class JSONSiteTests(SiteTestCase):
    def test_failure_below_the_routes_is_json(self) -> None:
        client = Client(self.site(Broken()))
        client.send(b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n")
        self.assertEqual(client.answer(), (500, {"Err": "hostnic failed to process the request "
                                                        "(RuntimeError); see the hostnic log"}))
        self.flushLoggedErrors(RuntimeError)

    def test_admin_failures_are_jsonrpc(self) -> None:
        client = Client(self.site(Broken(), jsonrpc_refusal))
        client.send(b"POST /rpc HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n")
        self.assertEqual(client.answer()[1]["error"]["code"], -32603)
        self.flushLoggedErrors(RuntimeError)

    def test_http10_without_host_over_unix(self) -> None:
        client = Client(self.site(Echo()))
        client.send(b"POST /x HTTP/1.0\r\nContent-Length: 2\r\n\r\n{}")
        self.assertTrue(client.transport.value().startswith(b"HTTP/1.0 200 OK"))

    def test_strict_json(self) -> None:
        for raw, reason in ((b"[" * 50_000, "nested too deeply"), (b"NaN", "not JSON"),
                            (b'{"id": Infinity}', "not JSON"), (b"\xff", "not JSON")):
            self.assertIn(reason, str(self.assertRaises(NotJSON, loads, raw)))


class Headers(Resource):
    """Answers with the Content-Type it was sent and the form arguments
    twisted.web found."""

    isLeaf = True

    def render(self, request: Any) -> bytes:
        request.content.read()
        return json.dumps({"type": [t.decode() for t in
                                    request.requestHeaders.getRawHeaders(b"content-type", [])],
                           "args": sorted(k.decode() for k in request.args)}).encode()


class ContentTypeTests(SiteTestCase):
    """Both APIs read JSON bodies only: a POST body is never parsed as a form
    (twisted.web would, through the email package, on every call), and a
    route still sees the Content-Type it was sent."""

    def test_a_form_body_is_not_parsed_and_the_route_sees_its_type(self) -> None:
        import twisted.web.http as web_http

        def refuse(ctype: bytes) -> bytes:
            raise AssertionError("the Content-Type was parsed")
        self.patch(web_http, "_parseContentType", refuse)
        client = Client(self.site(Headers()))
        body = b"a=1&b=2"
        client.send(b"POST /x?q=1 HTTP/1.1\r\nHost: h\r\n"
                    b"Content-Type: application/x-www-form-urlencoded\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        self.assertEqual(client.answer(), (200, {"type": ["application/x-www-form-urlencoded"],
                                                 "args": ["q"]}))


class LimitTests(SiteTestCase):
    def test_an_announced_oversized_body_is_refused_before_it_is_read(self) -> None:
        client = Client(self.site(Echo(), max_body=1000))
        client.send(b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 100000000\r\n\r\n")
        self.assertEqual(client.answer(), (413, {"Err": "the request body is larger than "
                                                        "1000 bytes"}))
        self.assertTrue(client.transport.disconnecting)
        client.send(b"x" * 5000)  # whatever still arrives is not kept
        self.assertEqual(client.protocol.requests[0].content, None)  # type: ignore[union-attr]

    def test_a_chunked_body_is_cut_off_at_the_limit(self) -> None:
        Echo.seen = []
        client = Client(self.site(Echo(), max_body=1000))
        client.send(b"POST /x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(3):
            client.send(b"200\r\n" + b"x" * 512 + b"\r\n")
        self.assertEqual(client.answer()[0], 413)
        self.assertEqual(Echo.seen, [])

    def test_without_the_token_nothing_of_the_body_is_read(self) -> None:
        site = self.site(Echo(), jsonrpc_refusal,
                         authorize=lambda r: r.getHeader(b"authorization") == b"Bearer t")
        client = Client(site)
        client.send(b"POST /rpc HTTP/1.1\r\nHost: h\r\nContent-Length: 100000000\r\n"
                    b"Expect: 100-continue\r\n\r\n")
        code, body = client.answer()
        self.assertEqual((code, body["error"]["code"]), (401, -32600))
        self.assertNotIn(b"100 Continue", client.transport.value())
        self.assertIn(b'WWW-Authenticate: Bearer realm="hostnic"', client.transport.value())
        allowed = Client(site)
        allowed.send(b"POST /rpc HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer t\r\n"
                     b"Content-Length: 2\r\n\r\n{}")
        self.assertEqual(allowed.answer(), (200, {"size": 2}))

    def test_a_client_that_trickles_is_dropped(self) -> None:
        client = Client(self.site(Echo(), request_seconds=10))
        for _ in range(9):
            client.send(b"P")
            self.clock.advance(1)  # a byte a second keeps an idle timer happy...
        self.assertFalse(client.transport.disconnecting)
        self.clock.advance(1.5)  # ...but not the request deadline
        self.assertTrue(client.transport.disconnected or client.transport.disconnecting)

    def test_the_deadline_covers_the_client_not_the_handler(self) -> None:
        client = Client(self.site(Echo(), request_seconds=10))
        self.clock.advance(9)
        client.send(b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\n{}")
        self.assertEqual(client.answer(), (200, {"size": 2}))
        # A kept-alive connection gets a new deadline for its next request.
        self.clock.advance(9)
        self.assertFalse(client.transport.disconnecting)
        self.clock.advance(2)
        self.assertTrue(client.transport.disconnected or client.transport.disconnecting)

    def test_connections_past_the_cap_are_closed_at_once(self) -> None:
        site = self.site(Echo(), max_connections=3)
        clients = [Client(site) for _ in range(3)]
        self.assertIsNone(site.buildProtocol(UNIXAddress(b"/peer")))
        clients[0].close()
        self.assertIsNotNone(Client(site).protocol)
        self.assertEqual(site.refused["connections"], 1)


class Gated(Resource):
    """Each call waits until the test opens its gate (a call in a thread)."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.started: list[Any] = []

    def render(self, request: Any) -> Any:
        from twisted.web.server import NOT_DONE_YET
        self.started.append(request)
        return NOT_DONE_YET

    def open(self, n: int) -> None:
        request = self.started[n]
        request.write(json.dumps({"call": n}).encode())
        request.finish()


class InFlightTests(SiteTestCase):
    """At most ``max_in_flight`` calls run at once; the rest wait, whole, in
    arrival order, and each runs when one before it is answered or its
    client is gone."""

    CALL = b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\n{}"

    def hang_up(self, client: Client) -> None:
        from twisted.internet.error import ConnectionDone
        from twisted.python.failure import Failure
        assert client.protocol is not None
        client.protocol.connectionLost(Failure(ConnectionDone()))

    def test_calls_past_the_limit_wait_their_turn(self) -> None:
        gated = Gated()
        site = self.site(gated, max_in_flight=2)
        clients = [Client(site) for _ in range(4)]
        for client in clients:
            client.send(self.CALL)
        self.assertEqual(len(gated.started), 2)  # two run, two wait
        gated.open(0)
        self.assertEqual(clients[0].answer(), (200, {"call": 0}))
        self.assertEqual(len(gated.started), 2)  # the next runs on the reactor's next turn
        self.clock.advance(0)
        self.assertEqual(len(gated.started), 3)
        self.hang_up(clients[1])  # a client gone frees its call's place
        self.clock.advance(0)
        self.assertEqual(len(gated.started), 4)
        self.assertIs(gated.started[3].channel, clients[3].protocol)  # in arrival order
        for n in (2, 3):
            gated.open(n)
        self.assertEqual(clients[3].answer(), (200, {"call": 3}))
        self.assertEqual(site.in_flight, 0)

    def test_a_call_whose_client_left_while_it_waited_never_begins(self) -> None:
        gated = Gated()
        site = self.site(gated, max_in_flight=1)
        first, second, third = Client(site), Client(site), Client(site)
        for client in (first, second, third):
            client.send(self.CALL)
        self.hang_up(second)
        gated.open(0)
        self.clock.advance(0)
        self.clock.advance(0)
        self.assertEqual(len(gated.started), 2)  # the first and the third
        self.assertIs(gated.started[1].channel, third.protocol)
        gated.open(1)
        self.assertEqual(site.in_flight, 0)

    def test_no_limit_where_none_is_set(self) -> None:
        gated = Gated()
        site = self.site(gated)
        for _ in range(20):
            Client(site).send(self.CALL)
        self.assertEqual(len(gated.started), 20)

    def test_a_pipelined_call_waiting_its_turn_is_not_taken_for_a_slow_client(self) -> None:
        gated = Gated()
        site = self.site(gated, max_in_flight=1, request_seconds=5)
        other, pipelining = Client(site), Client(site)
        other.send(self.CALL)  # holds the one place
        pipelining.send(self.CALL + self.CALL)
        self.assertEqual(len(gated.started), 1)
        gated.open(0)
        self.clock.advance(0)  # the pipelining client's first call runs
        gated.open(1)  # answered: its second call, read already, waits its turn
        self.clock.advance(0)
        self.clock.advance(10)  # longer than a client may take to send a request
        self.assertFalse(pipelining.transport.disconnecting)
        self.assertEqual(len(gated.started), 3)

    def test_at_least_one_call_at_once(self) -> None:
        with self.assertRaises(ValueError):
            Limits(max_in_flight=0)
