"""Throwaway network namespaces for real-netlink tests (root only)."""

from __future__ import annotations

import ctypes
import os
import subprocess
import uuid
from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from hostnic.kernel import changes

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def ip(*args: str, check: bool = True) -> str:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout


def _setns(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns failed")
    finally:
        os.close(fd)


class NetnsTestCase(SynchronousTestCase):
    """Runs each test's thread inside a fresh namespace ``self.ns`` (the
    "host"), with a second one ``self.sandbox`` standing in for a container."""

    def setUp(self) -> None:
        if os.geteuid() != 0:
            raise SkipTest("real-netlink tests need root")
        tag = uuid.uuid4().hex[:8]
        self.ns, self.sandbox = f"hnt{tag}", f"hns{tag}"
        for name in (self.ns, self.sandbox):
            ip("netns", "add", name)
            self.addCleanup(ip, "netns", "del", name, check=False)
        ip("-n", self.ns, "link", "set", "lo", "up")
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        changes.forget_thread_socket()
        _setns(f"/run/netns/{self.ns}")

        def go_home() -> None:
            changes.forget_thread_socket()
            if _libc.setns(home, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns home failed")
            os.close(home)
        self.addCleanup(go_home)

    def veth(self, name: str, **settings: Any) -> str:
        """A veth in the host namespace (peer in the sandbox); returns its MAC."""
        peer = f"p{uuid.uuid4().hex[:8]}"
        ip("-n", self.ns, "link", "add", name, "type", "veth", "peer", "name", peer,
           "netns", self.sandbox)
        return ip("-n", self.ns, "-br", "link", "show", name).split()[2]


class FakeReactor(Clock):
    """Only what LinkMonitor uses; tests call ``drain()`` as the reactor would."""

    def addReader(self, reader: object) -> None:
        pass

    def removeReader(self, reader: object) -> None:
        pass
