"""The CNI endpoint's framing and guards (hostnic.api.cnisocket)."""

from __future__ import annotations

import json
import os
from typing import Any, Sequence

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from hostnic.api.cnisocket import HEADER, MAX_FRAME, CNIFactory, frame


class Recorder:
    """Stands for CNIAPI: records each request and its descriptors."""

    def __init__(self) -> None:
        self.seen: list[tuple[Any, list[int]]] = []
        self.gate: Deferred[None] | None = None

    async def handle(self, request: Any, fds: Sequence[int]) -> tuple[int, dict[str, Any]]:
        self.seen.append((request, list(fds)))
        if self.gate is not None:
            await self.gate
        return 0, {"answered": request}


class Connection:
    def __init__(self, factory: CNIFactory) -> None:
        self.protocol = factory.buildProtocol(None)
        self.transport = StringTransport()
        self.transport.connected = True  # type: ignore[attr-defined]
        self.protocol.makeConnection(self.transport)

    def answer(self) -> Any:
        raw = self.transport.value()
        (length,) = HEADER.unpack_from(raw)
        return json.loads(raw[HEADER.size:HEADER.size + length])


class CNISocketTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.api = Recorder()
        self.clock = Clock()
        self.factory = CNIFactory(self.api, self.clock, max_connections=2,  # type: ignore[arg-type]
                                  request_seconds=5)

    def pipe_fds(self) -> list[int]:
        read, write = os.pipe()
        return [read, write]

    def test_a_frame_in_pieces_with_its_descriptors_is_one_call_and_one_answer(self) -> None:
        c = Connection(self.factory)
        fds = self.pipe_fds()
        for fd in fds:
            c.protocol.fileDescriptorReceived(fd)
        data = frame({"env": {"CNI_COMMAND": "ADD"}})
        for i in range(0, len(data), 3):
            c.protocol.dataReceived(data[i:i + 3])
        self.assertEqual(self.api.seen, [({"env": {"CNI_COMMAND": "ADD"}}, fds)])
        self.assertEqual(c.answer(), {"exit": 0, "output": {"answered": {
            "env": {"CNI_COMMAND": "ADD"}}}})
        self.assertTrue(c.transport.disconnecting)
        for fd in fds:
            os.close(fd)  # (the recorder stood for the API, which owns them)

    def test_a_third_descriptor_is_closed_at_once(self) -> None:
        c = Connection(self.factory)
        read, write = os.pipe()
        os.set_blocking(read, False)
        c.protocol.fileDescriptorReceived(os.dup(read))
        c.protocol.fileDescriptorReceived(os.dup(read))
        c.protocol.fileDescriptorReceived(write)
        self.assertEqual(os.read(read, 1), b"")  # the only write end is closed
        c.transport.loseConnection()
        c.protocol.connectionLost(None)  # type: ignore[arg-type]
        os.close(read)
        self.assertEqual(self.api.seen, [])

    def test_too_large_and_not_json_are_refused_without_a_call(self) -> None:
        c = Connection(self.factory)
        c.protocol.dataReceived(HEADER.pack(MAX_FRAME + 1))
        self.assertEqual(c.answer()["output"]["code"], 6)
        self.assertIn("larger than", c.answer()["output"]["msg"])
        c = Connection(self.factory)
        c.protocol.dataReceived(HEADER.pack(3) + b"{x}")
        self.assertEqual(c.answer(), {"exit": 1, "output": {
            "cniVersion": "1.1.0", "code": 6, "msg": "the request is not JSON"}})
        self.assertEqual(self.api.seen, [])

    def test_a_request_that_does_not_come_whole_in_time_is_dropped(self) -> None:
        c = Connection(self.factory)
        fds = self.pipe_fds()
        for fd in fds:
            c.protocol.fileDescriptorReceived(fd)
        c.protocol.dataReceived(HEADER.pack(100) + b"{")
        self.clock.advance(5)
        self.assertTrue(c.transport.disconnecting)
        c.protocol.connectionLost(None)  # type: ignore[arg-type]
        for fd in fds:
            self.assertRaises(OSError, os.close, fd)  # closed with the connection

    def test_connections_past_the_cap_are_answered_try_again_and_closed(self) -> None:
        first, second = Connection(self.factory), Connection(self.factory)
        third = Connection(self.factory)
        self.assertTrue(third.transport.disconnecting)
        # An answer, so the plugin fails a DEL hostnic did not handle.
        self.assertEqual(third.answer()["output"]["code"], 11)
        self.assertFalse(first.transport.disconnecting or second.transport.disconnecting)

    def test_a_call_runs_to_its_end_when_the_shim_leaves_and_a_stop_waits_for_it(self) -> None:
        self.api.gate = Deferred()
        c = Connection(self.factory)
        c.protocol.dataReceived(frame({"env": {}}))
        c.transport.connected = False  # type: ignore[attr-defined]
        c.protocol.connectionLost(None)  # type: ignore[arg-type]
        drained = self.factory.drain()
        self.assertNoResult(drained)
        self.assertTrue(Connection(self.factory).transport.disconnecting)  # no new one
        self.api.gate.callback(None)
        self.successResultOf(drained)
        self.assertEqual(c.transport.value(), b"")  # nobody to answer


class SharedLimitTests(SynchronousTestCase):
    """CNI calls take their places among the driver's calls under way (the
    driver's site admits them, as the composition root wires it)."""

    def test_calls_past_the_limit_wait_and_one_whose_plugin_left_never_begins(self) -> None:
        from twisted.web.resource import Resource

        from hostnic.api.http import GuardedSite, Limits, driver_refusal
        clock = Clock()
        driver = GuardedSite(Resource(), driver_refusal, Limits(max_in_flight=1), reactor=clock)
        api = Recorder()
        api.gate = Deferred()
        factory = CNIFactory(api, clock, admission=driver)  # type: ignore[arg-type]
        first, second, third = (Connection(factory) for _ in range(3))
        first.protocol.dataReceived(frame({"n": 1}))
        second.protocol.dataReceived(frame({"n": 2}))
        read, write = os.pipe()
        os.set_blocking(read, False)
        third.protocol.fileDescriptorReceived(write)
        third.protocol.dataReceived(frame({"n": 3}))
        self.assertEqual([r for r, _ in api.seen], [{"n": 1}])  # the others wait
        third.transport.connected = False  # type: ignore[attr-defined]
        third.protocol.connectionLost(None)  # type: ignore[arg-type]
        api.gate.callback(None)
        clock.advance(0)
        clock.advance(0)
        self.assertEqual([r for r, _ in api.seen], [{"n": 1}, {"n": 2}])
        self.assertEqual(os.read(read, 1), b"")  # the third's descriptor is closed
        os.close(read)
        self.assertEqual(driver.in_flight, 0)
