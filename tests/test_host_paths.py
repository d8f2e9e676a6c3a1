"""Where NetlinkHost looks for dockerd's namespace files."""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any, Callable

from twisted.internet.defer import succeed
from twisted.trial.unittest import SynchronousTestCase

from hostnic.kernel.host import NetlinkHost


def run_now(f: Callable[..., Any], *args: Any) -> Any:
    return succeed(f(*args))


class NamespaceExistsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.work = tempfile.mkdtemp(prefix="hn-ns-")
        self.addCleanup(shutil.rmtree, self.work, True)
        open(os.path.join(self.work, "0123abcd"), "w").close()

    def exists(self, host: NetlinkHost, key: str) -> bool:
        from twisted.internet.defer import Deferred
        result: bool = self.successResultOf(Deferred.fromCoroutine(host.namespace_exists(key)))
        return result

    def test_a_sandbox_key_is_looked_up_in_the_netns_dir(self) -> None:
        """A managed plugin sees dockerd's /var/run/docker/netns as the netns dir."""
        host = NetlinkHost(None, run_now, run_now, netns_dir=self.work)  # type: ignore[arg-type]
        self.assertTrue(self.exists(host, "/var/run/docker/netns/0123abcd"))
        self.assertFalse(self.exists(host, "/var/run/docker/netns/gone"))

    def test_without_one_the_key_is_the_path(self) -> None:
        host = NetlinkHost(None, run_now, run_now)  # type: ignore[arg-type]
        self.assertTrue(self.exists(host, os.path.join(self.work, "0123abcd")))
        self.assertFalse(self.exists(host, "/var/run/docker/netns/0123abcd"))


class KernelErrorTests(SynchronousTestCase):
    """The kernel's errors leave the host port as HostError, a sentence: the
    core handles its own error types only (a bare OSError once skipped the
    retry of a failed delete and ended a start-up reconciliation)."""

    def setUp(self) -> None:
        from hostnic.kernel import rtnl
        from hostnic.kernel.monitor import LinkMonitor
        from twisted.internet.task import Clock

        def exhausted(*args: Any, **kwargs: Any) -> Any:
            raise OSError(24, "Too many open files")
        self.patch(rtnl, "dump", exhausted)  # the raw reader every read goes through
        monitor = LinkMonitor(Clock(), run_now)  # never started: lookups ask the kernel
        self.host = NetlinkHost(monitor, run_now, run_now)

    def refusal(self, coroutine: Any) -> str:
        from twisted.internet.defer import Deferred
        from hostnic.errors import HostError
        return str(self.failureResultOf(Deferred.fromCoroutine(coroutine), HostError).value)

    def test_every_read_says_what_failed(self) -> None:
        from hostnic.state.model import LinkInfo, NicRef
        link = LinkInfo(7, "ens7", "02:00:00:00:00:07", 1500, 0, None)
        for coroutine, what in (
                (self.host.inspect(link, with_record=True),
                 "inspecting interface 7: Too many open files"),
                (self.host.adopt(7), "reading the configuration of interface 7: Too many"),
                (self.host.survey(), "surveying the host's links: Too many open files"),
                (self.host.locate(NicRef("02:00:00:00:00:07"), "hnx"),
                 "looking for NIC 02:00:00:00:00:07 in the kernel: Too many open files"),
                (self.host.locate_name("ens7"), "looking for interface ens7 in the kernel")):
            self.assertIn(what, self.refusal(coroutine))

    def test_a_change_says_what_failed(self) -> None:
        from hostnic.state.model import NicState
        message = self.refusal(self.host.restore(7, NicState("ens7", "02:00:00:00:00:07",
                                                             1500, True)))
        self.assertEqual(message, "restoring interface 7 as ens7: Too many open files")
