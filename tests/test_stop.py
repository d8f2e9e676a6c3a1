"""A call under way runs to its end whoever leaves: a client that hangs up,
a stop (SIGTERM) that comes in the middle. Seen in the soak: a SIGTERM during
a Join cancelled it half way (Klein cancels a route when its connection goes)
and logged an internal error with a traceback."""

from __future__ import annotations

import json

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from hostnic.api.libnetwork import lend_nic
from hostnic.state.model import Phase
from twisted.internet.error import ConnectionLost
from twisted.python.failure import Failure

from tests.helpers import EP, MAC1, NET, CoreTestCase, join_body
from tests.test_hostile import dechunk
from tests.test_http import Client as WebClient


class Client(WebClient):
    def close(self) -> None:
        assert self.protocol is not None
        self.protocol.connectionLost(Failure(ConnectionLost()))

    def answer(self) -> tuple[int, object]:
        head, _, body = self.transport.value().partition(b"\r\n\r\n")
        if b"transfer-encoding: chunked" in head.lower():
            body = dechunk(body)
        return int(head.split(b" ")[1]), json.loads(body)


def join_request() -> bytes:
    body = json.dumps(join_body()).encode()
    return (b"POST /NetworkDriver.Join HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n%s"
            % (len(body), body))


class CallsUnderWayTests(CoreTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.nic = self.host.add("ens4", MAC1, up=True)
        self.create_network(hostnic_mac=MAC1)
        self.create_endpoint(EP)
        assert self.daemon is not None
        self.site = self.daemon.sites(reactor=Clock())["driver"]
        self.gate: Deferred[None] = Deferred()
        self.host.gate = self.gate  # the host is slow: the Join waits there

    def open(self) -> None:
        self.host.gate = None
        self.gate.callback(None)

    def test_a_client_that_hangs_up_does_not_cut_the_call_short(self) -> None:
        client = Client(self.site)
        client.send(join_request())
        client.close()  # dockerd gave up on this connection
        self.open()
        self.assertEqual(self.core.state.claims[EP].phase, Phase.JOINED)
        self.assertEqual(self.nic.name, "hn" + EP[:13])  # lent whole, as a retry expects
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_a_stop_lets_the_call_finish_and_answers_it(self) -> None:
        busy, idle = Client(self.site), Client(self.site)
        busy.send(join_request())
        drained = self.site.drain()
        # The connection between calls closes at once: dockerd's next call
        # connects again (and finds the socket closed: it keeps its body).
        self.assertTrue(idle.transport.disconnecting)
        idle.close()
        self.assertFalse(busy.transport.disconnecting)
        self.assertNoResult(drained)
        self.open()
        status, answer = busy.answer()
        self.assertEqual(status, 200)
        self.assertEqual(answer["InterfaceName"]["SrcName"], "hn" + EP[:13])  # type: ignore
        self.assertTrue(busy.transport.disconnecting)  # answered, then closed
        busy.close()
        self.successResultOf(drained)

    def test_the_daemon_stops_once_its_work_is_done_or_the_grace_is_up(self) -> None:
        assert self.daemon is not None
        joining = Deferred.fromCoroutine(self.core.lend(lend_nic(join_body())))
        stopping = Deferred.fromCoroutine(self.daemon.stop(grace=10))
        self.assertNoResult(stopping)
        self.open()
        self.successResultOf(joining)
        self.successResultOf(stopping)
        # Work that never ends does not hold a stop for ever.
        self.core = self.new_core()
        assert self.daemon is not None
        self.host.gate = Deferred()
        Deferred.fromCoroutine(self.core.drop_network(NET))
        stopping = Deferred.fromCoroutine(self.daemon.stop(grace=10))
        self.reactor.advance(10)
        self.successResultOf(stopping)
