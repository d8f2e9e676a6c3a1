"""A unix endpoint's path made ready: directory, stale socket file."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile

from twisted.trial.unittest import SynchronousTestCase

from hostnic.daemon.sockets import prepare
from hostnic.endpoints import parse_endpoint


class EndpointStringTests(SynchronousTestCase):
    def test_paths_and_options(self) -> None:
        unix = parse_endpoint("unix:/run/h/a.sock:mode=600:lockfile=1")
        self.assertEqual((unix.unix_path, dict(unix.options)),
                         ("/run/h/a.sock", {"mode": "600", "lockfile": "1"}))
        escaped = parse_endpoint("unix:address=/x\\:y.sock:mode=660")
        self.assertEqual((escaped.unix_path, escaped.options["mode"]), ("/x:y.sock", "660"))
        self.assertIsNone(parse_endpoint("tcp:9123").unix_path)
        self.assertIsNone(parse_endpoint("systemd:domain=UNIX:index=0").unix_path)
        tcp6 = parse_endpoint("TCP6:9123:interface=\\:\\:1")
        self.assertEqual((tcp6.kind, tcp6.args, tcp6.options["interface"]), ("tcp6", ("9123",), "::1"))


class PrepareTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.work = tempfile.mkdtemp(prefix="hn-us-")
        self.addCleanup(shutil.rmtree, self.work, True)
        self.path = os.path.join(self.work, "run", "hostnic", "admin.sock")

    def bound(self, listening: bool) -> socket.socket:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        sock = socket.socket(socket.AF_UNIX)
        self.addCleanup(sock.close)
        sock.bind(self.path)
        if listening:
            sock.listen(1)
        return sock

    def test_makes_the_directory(self) -> None:
        prepare(f"unix:{self.path}:mode=600")
        self.assertTrue(os.path.isdir(os.path.dirname(self.path)))

    def test_a_dead_predecessors_socket_is_removed(self) -> None:
        self.bound(listening=False).close()  # a killed process leaves the file
        self.assertTrue(os.path.exists(self.path))
        prepare(f"unix:{self.path}:mode=600:lockfile=0")
        self.assertFalse(os.path.exists(self.path))

    def test_a_live_socket_is_left_to_its_owner(self) -> None:
        self.bound(listening=True)
        prepare(f"unix:{self.path}:lockfile=0")
        self.assertTrue(os.path.exists(self.path))

    def test_lockfile_and_non_sockets_are_not_touched(self) -> None:
        self.bound(listening=False).close()
        for lock in (":lockfile=1", ""):  # Twisted's pid lock, its default, decides
            prepare(f"unix:{self.path}{lock}")
            self.assertTrue(os.path.exists(self.path))
        os.unlink(self.path)
        with open(self.path, "w") as f:
            f.write("a user's file")
        prepare(f"unix:{self.path}:lockfile=0")
        self.assertTrue(os.path.isfile(self.path))
