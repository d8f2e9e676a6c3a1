"""Shared set-up for unit tests of the core and the driver API."""

from __future__ import annotations

import json
import os
from typing import Any, Coroutine, Sequence, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from hostnic.api.libnetwork import CreateEndpoint, define_network, lend_nic
from hostnic.core.commands import ClaimNic, Claimed, EndpointKey, Lent
from hostnic.core.owner import Core
from hostnic.daemon.compose import Daemon, Ports, Settings, build
from hostnic.state.fileformat import encode
from hostnic.state.model import State
from hostnic.state.store import COMPACT_EVERY, StateStore
from tests.fakes import FakeHost, FakeLink, FakeSandbox, FaultyFileSystem, Threads, run_now

T = TypeVar("T")
NET = "n" * 63 + "1"
NET2 = "n" * 63 + "2"
EP = "1" + "e" * 63  # distinct from the first character, as Docker's random ids are
EP2 = "2" + "e" * 63
EP3 = "3" + "e" * 63
MAC1, MAC2, MAC3 = "52:54:00:e1:d9:e1", "52:54:00:e1:d9:e2", "52:54:00:e1:d9:e3"
SANDBOX = "/var/run/docker/netns/abc"


def network_body(network_id: str = NET, **generic: str) -> dict[str, Any]:
    return {"NetworkID": network_id,
            "Options": {"com.docker.network.generic": generic},
            "IPv4Data": [{"AddressSpace": "LocalDefault", "Pool": "192.168.7.0/24",
                          "Gateway": "192.168.7.1/24"}],
            "IPv6Data": []}


def endpoint_body(endpoint_id: str = EP, network_id: str = NET, mac: str = "",
                  **options: str) -> dict[str, Any]:
    return {"NetworkID": network_id, "EndpointID": endpoint_id,
            "Interface": {"Address": "192.168.7.10/24", "AddressIPv6": "",
                          "MacAddress": mac}, "Options": options}


def join_body(endpoint_id: str = EP, network_id: str = NET,
              sandbox: str = SANDBOX) -> dict[str, Any]:
    return {"NetworkID": network_id, "EndpointID": endpoint_id, "SandboxKey": sandbox}


def claim_request(body: dict[str, Any]) -> ClaimNic:
    """The core's command for a CreateEndpoint body, as the driver makes it."""
    return CreateEndpoint.parse(body).command


def open_fake_sandbox(key: str, fds: Sequence[int]) -> FakeSandbox:
    """As the kernel's: the descriptors are hostnic's from here."""
    for fd in fds:
        os.close(fd)
    return FakeSandbox(key)


class CoreTestCase(SynchronousTestCase):
    """hostnic as ``twistd hostnic`` builds it (``hostnic.daemon.compose``), over
    fakes at its ports: the host (``FakeHost``), the reactor's clock, the
    store's thread (``Threads``: at once unless a test gates it) and the disk
    (``FaultyFileSystem``: healthy unless a test fills it)."""

    compact_every = COMPACT_EVERY
    endpoints: dict[str, str] = {"driver": "unix:/d", "admin": "unix:/a"}
    admin_token: bytes | None = None

    def setUp(self) -> None:
        self.host = FakeHost()
        self.host.live_namespaces.add(SANDBOX)
        self.now = 1000.0  # the core's wall clock; a test may move it
        self.reactor = Clock()
        self.threads = Threads()
        self.disk = FaultyFileSystem()
        self.state_dir = self.mktemp()
        self.daemon: Daemon | None = None
        self.core = self.new_core()

    def build(self) -> Daemon:
        """A daemon from the state directory, as twistd builds one (not started)."""
        return build(Settings(self.state_dir, self.endpoints, self.admin_token,
                              compact_every=self.compact_every),
                     Ports(reactor=self.reactor, host=self.host, run_in_thread=self.threads,
                           clock=lambda: self.now, fs=self.disk, open_sandbox=open_fake_sandbox))

    def crash(self) -> None:
        """The process dies: its timers, its link listener and its open files
        go with it; the disk and the kernel's links remain."""
        if self.daemon is not None:
            self.daemon.halt()  # to the fake kernel, what a dead process leaves
            self.daemon = None
        self.host.detach()

    def new_core(self) -> Core:
        """hostnic as after a crash and a restart: everything in memory is
        dropped, and a new daemon is built and started from the directory."""
        self.crash()
        self.daemon = self.build()
        self.store = self.daemon.store
        self.call(self.daemon.start())
        return self.daemon.core

    def call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        result: T = self.successResultOf(Deferred.fromCoroutine(coroutine))
        return result

    def refused(self, coroutine: Coroutine[Any, Any, Any], kind: type = Exception) -> str:
        return str(self.failureResultOf(Deferred.fromCoroutine(coroutine), kind).value)

    def on_disk(self) -> dict[str, Any]:
        """The durable state in its JSON form."""
        loaded: dict[str, Any] = json.loads(encode(self.durable()))
        return loaded

    def disk_bytes(self) -> dict[str, bytes]:
        """Every file of the state directory, byte for byte."""
        contents = {}
        for name in sorted(os.listdir(self.state_dir)):
            with open(os.path.join(self.state_dir, name), "rb") as f:
                contents[name] = f.read()
        return contents

    def durable(self) -> State:
        """The state as a restart would find it (snapshot and journal)."""
        return StateStore(self.state_dir, run_now).read()[0]

    def watch_record_before_touch(self) -> list[str]:
        """Collect every change to a pooled NIC made while the disk holds no
        record of its original state (the write-ahead rule)."""
        violations: list[str] = []

        def check(link: FakeLink, what: str) -> None:
            state = self.durable()
            claim = state.claim_of_link(link.mac, link.perm, link.name)
            if claim is None or claim.original is None:
                violations.append(f"{what} of {link.mac} ({link.name}) with no durable record")

        self.host.before_change = check
        return violations

    # shorthand for driver-shaped calls into the core
    def create_network(self, network_id: str = NET, **generic: str) -> None:
        self.call(self.core.define_network(define_network(network_body(network_id, **generic))))

    def create_endpoint(self, endpoint_id: str = EP, network_id: str = NET, mac: str = "",
                        **options: str) -> Claimed:
        return self.call(self.core.claim(claim_request(
            endpoint_body(endpoint_id, network_id, mac, **options))))

    def join(self, endpoint_id: str = EP, network_id: str = NET) -> Lent:
        return self.call(self.core.lend(lend_nic(join_body(endpoint_id, network_id))))

    def leave(self, endpoint_id: str = EP, network_id: str = NET) -> None:
        self.call(self.core.leave(EndpointKey(network_id, endpoint_id)))

    def delete_endpoint(self, endpoint_id: str = EP, network_id: str = NET) -> None:
        self.call(self.core.give_back(EndpointKey(network_id, endpoint_id)))
