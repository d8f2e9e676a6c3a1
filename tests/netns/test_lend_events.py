"""The core over the real kernel and the real link monitor: what a lend's own
link events do when the reactor reads them late."""

from __future__ import annotations

import json
from typing import Any, Coroutine

from twisted.internet.defer import Deferred

from hostnic.api.libnetwork import define_network, lend_nic
from hostnic.daemon.compose import Ports, Settings, build
from hostnic.kernel.host import NetlinkHost
from hostnic.kernel.monitor import LinkMonitor
from tests.helpers import claim_request
from tests.fakes import run_now
from tests.helpers import endpoint_body, join_body, network_body
from tests.netns.nsutil import FakeReactor, NetnsTestCase, ip

import pytest

pytestmark = pytest.mark.netns


class LateEventsTests(NetnsTestCase):
    def test_a_lent_nic_keeps_its_transit_name_when_its_events_are_read_late(self) -> None:
        # CI, dockerd 26.1, ten containers at once: the Join renamed the NIC
        # (down, then the transit name) and answered before the reactor read
        # those two events. Hearing "ens9 is down", the core settled the NIC,
        # and that settle's lookup saw the half-applied burst: the NIC home
        # under its own name, down. It restored it, and the container failed
        # with 'failed to get link by name "hn…"'.
        mac = self.veth("ens9")
        ip("-n", self.ns, "link", "set", "ens9", "up")
        monitor = LinkMonitor(FakeReactor(), run_now)  # read only when the test says
        daemon = build(Settings(self.mktemp()), Ports(
            reactor=FakeReactor(), host=NetlinkHost(monitor, run_now, run_now),
            run_in_thread=run_now))
        self.addCleanup(daemon.halt)
        core = daemon.core

        def call(coroutine: Coroutine[Any, Any, Any]) -> Any:
            return self.successResultOf(Deferred.fromCoroutine(coroutine))

        call(daemon.start())
        call(core.define_network(define_network(network_body(hostnic_mac=mac))))
        call(core.claim(claim_request(endpoint_body())))
        lent = call(core.lend(lend_nic(join_body())))
        monitor.doRead()  # the reactor gets to the lend's events now
        [link] = json.loads(ip("-n", self.ns, "-j", "link", "show", "dev", lent.src_name))
        self.assertEqual(link["address"], mac)
