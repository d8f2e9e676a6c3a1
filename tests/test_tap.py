"""The twistd plugin's own decisions: which admin endpoints need a token,
and the systemd watchdog period."""

from __future__ import annotations

from twisted.internet.task import Clock

import os
from typing import Any

from twisted.internet.address import IPv4Address, UNIXAddress
from twisted.trial.unittest import SynchronousTestCase

from hostnic.daemon.compose import Daemon, Ports, Settings, build
from hostnic.daemon.sdnotify import watchdog_interval
from hostnic.daemon.tap import HostnicService
from hostnic.endpoints import parse_endpoint
from hostnic.errors import HostnicError
from tests.fakes import FakeHost, run_now


def daemon(state_dir: str, token: bytes | None = None) -> Daemon:
    return build(Settings(state_dir, {"driver": "unix:/d",
                                      "admin": "systemd:domain=UNIX:index=0"}, token),
                 Ports(reactor=None, host=FakeHost(), run_in_thread=run_now))


class FakePort:
    def __init__(self, address: Any) -> None:
        self.address = address

    def getHost(self) -> Any:
        return self.address


class EndpointTests(SynchronousTestCase):
    def test_network_endpoints(self) -> None:
        for description in ("tcp:9123", "TCP6:9123:interface=\\:\\:1", "ssl:443",
                            "systemd:domain=INET:index=0", "systemd:domain=INET6:name=admin"):
            self.assertTrue(parse_endpoint(description).on_the_network, description)
        for description in ("unix:/run/hostnic/admin.sock", "systemd:domain=UNIX:index=0"):
            self.assertFalse(parse_endpoint(description).on_the_network, description)

    def test_a_network_listener_without_a_token_is_fatal_whatever_the_string_said(self) -> None:
        service = HostnicService(None, daemon(self.mktemp()))
        self.assertRaises(HostnicError, service._listening,
                          FakePort(IPv4Address("TCP", "0.0.0.0", 9123)), "admin")
        service._listening(FakePort(UNIXAddress(b"/run/hostnic/admin.sock")), "admin")
        service = HostnicService(None, daemon(self.mktemp(), token=b"t"))
        service._listening(FakePort(IPv4Address("TCP", "0.0.0.0", 9123)), "admin")


class WatchdogTests(SynchronousTestCase):
    def setUp(self) -> None:
        saved = {k: os.environ.get(k) for k in ("WATCHDOG_USEC", "WATCHDOG_PID")}
        self.addCleanup(lambda: [os.environ.pop(k, None) if v is None
                                 else os.environ.__setitem__(k, v) for k, v in saved.items()])

    def test_period_for_this_process_only(self) -> None:
        os.environ.pop("WATCHDOG_USEC", None)
        self.assertIsNone(watchdog_interval())
        os.environ["WATCHDOG_USEC"] = "30000000"
        os.environ["WATCHDOG_PID"] = str(os.getpid())
        self.assertEqual(watchdog_interval(), 30.0)
        os.environ["WATCHDOG_PID"] = "1"  # meant for another process
        self.assertIsNone(watchdog_interval())


class FatalTests(SynchronousTestCase):
    class Reactor:
        def __init__(self, running: bool) -> None:
            self.running = running
            self.calls: list[str] = []

        def addSystemEventTrigger(self, *args: Any) -> None:
            self.calls.append("exit 1 after shutdown")

        def stop(self) -> None:
            self.calls.append("stop")

        def callWhenRunning(self, f: Any) -> None:
            self.calls.append("stop once running" if f == self.stop else "?")

    def test_a_refusal_before_the_reactor_runs_still_ends_the_process(self) -> None:
        """A listen refused while twistd builds the service (before reactor.run)
        must not leave a half-started daemon serving the driver alone."""
        from twisted.python.failure import Failure
        for running, expected in ((True, "stop"), (False, "stop once running")):
            reactor = self.Reactor(running)
            service = HostnicService(reactor, daemon(self.mktemp()))
            service._fatal(Failure(HostnicError("the admin socket is taken")))
            self.assertEqual(reactor.calls, ["exit 1 after shutdown", expected])


class CompositionTests(SynchronousTestCase):
    def test_twistd_serves_the_daemon_the_composition_root_built(self) -> None:
        """makeService builds through hostnic.daemon.compose.build, whose store
        loaded the state directory: no second store, no second core."""
        from hostnic.daemon import tap
        from hostnic.state.model import Network, NicRef, State
        from hostnic.state.store import StateStore
        from twisted.internet.defer import Deferred
        state_dir = self.mktemp()
        first = StateStore(state_dir, run_now)
        first.load()
        network = Network("n" * 64, (NicRef("52:54:00:00:00:01"),))
        self.successResultOf(Deferred.fromCoroutine(first.save(lambda: State().with_network(
            network))))
        first.close()
        built: list[Daemon] = []

        def spy(settings: Settings, ports: Ports) -> Daemon:
            built.append(build(settings, ports))
            return built[-1]
        self.patch(tap, "build", spy)
        self.patch(tap, "claim_host", lambda reactor, said: None)
        self.patch(tap, "kernel_ports", lambda reactor, netns_dir: Ports(
            reactor=reactor, host=FakeHost(), run_in_thread=run_now))
        self.patch(tap, "bound_memory", lambda reactor: None)
        self.patch(tap, "raise_descriptor_limit", lambda: None)
        options = tap.Options()
        options.parseOptions(["--state-dir", state_dir, "--socket", "unix:/nonexistent/d",
                              "--admin", "unix:/nonexistent/a", "--cni", "unix:/nonexistent/c"])
        top = tap.makeService(options)
        [service] = list(top)  # type: ignore[call-overload]
        [daemon] = built
        self.assertIs(service.daemon, daemon)
        self.assertEqual(daemon.core.state.networks, {network.id: network})
        self.assertIs(daemon.core.ledger.store, daemon.store)
        self.assertEqual(daemon.settings.endpoints, {"driver": "unix:/nonexistent/d",
                                                     "admin": "unix:/nonexistent/a",
                                                     "cni": "unix:/nonexistent/c"})
        sites = daemon.sites(reactor=Clock())
        self.assertEqual(sorted(sites), ["admin", "cni", "driver"])
        self.assertIs(sites["cni"].admission, sites["driver"])  # one limit for both
