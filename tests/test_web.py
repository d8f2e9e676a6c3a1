"""Raw HTTP into the Site: whatever breaks below the routes, the answer is JSON."""

from __future__ import annotations

import json

from twisted.internet.address import UNIXAddress
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource

from hostnic.web import driver_error, json_site, jsonrpc_error


class Broken(Resource):
    isLeaf = True

    def render(self, request: object) -> bytes:
        raise RuntimeError("kaput")


class Hello(Resource):
    isLeaf = True

    def render(self, request: object) -> bytes:
        return b"{}"


def exchange(resource: Resource, raw: bytes, error_body=driver_error) -> bytes:  # type: ignore[no-untyped-def]
    site = json_site(resource, error_body)
    protocol = site.buildProtocol(UNIXAddress(b"/peer"))
    transport = StringTransport(hostAddress=UNIXAddress(b"/sock"), peerAddress=UNIXAddress(None))
    protocol.makeConnection(transport)
    protocol.dataReceived(raw)
    return transport.value()


class JSONSiteTests(SynchronousTestCase):
    def test_failure_below_the_routes_is_json(self) -> None:
        out = exchange(Broken(), b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n")
        head, _, body = out.partition(b"\r\n\r\n")
        self.assertIn(b"500", head.split(b"\r\n")[0])
        self.assertEqual(json.loads(body), {"Err": "hostnic failed to process the request "
                                                   "(RuntimeError); see the hostnic log"})
        self.flushLoggedErrors(RuntimeError)

    def test_admin_failures_are_jsonrpc(self) -> None:
        out = exchange(Broken(), b"POST /rpc HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n",
                       jsonrpc_error)
        self.assertEqual(json.loads(out.partition(b"\r\n\r\n")[2])["error"]["code"], -32603)
        self.flushLoggedErrors(RuntimeError)

    def test_http10_without_host_over_unix(self) -> None:
        out = exchange(Hello(), b"POST /x HTTP/1.0\r\nContent-Length: 0\r\n\r\n")
        self.assertTrue(out.startswith(b"HTTP/1.0 200 OK"), out)
