"""Where NetlinkHost looks for dockerd's namespace files."""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any, Callable

from twisted.internet.defer import succeed
from twisted.trial.unittest import SynchronousTestCase

from hostnic.host import NetlinkHost


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
