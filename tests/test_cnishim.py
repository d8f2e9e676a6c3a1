"""The plugin executable (hostnic.cnishim) against daemons that misbehave:
nothing listening, a connection dropped without an answer, garbage. A DEL
hostnic may have handled is never reported as done; nothing is a traceback."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
from typing import Any, Callable

from twisted.trial.unittest import SynchronousTestCase

from hostnic.cnishim import HEADER

SHIM = [sys.executable, "-m", "hostnic.cnishim"]


class Daemon:
    """A unix socket that answers each connection with ``reply(request)``."""

    def __init__(self, path: str, reply: Callable[[bytes], bytes]) -> None:
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(path)
        self.server.listen(4)
        self.server.settimeout(10)  # (accept only)
        self.reply = reply
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        try:
            conn, _ = self.server.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(10)
            request = b""
            while len(request) < HEADER.size or \
                    len(request) < HEADER.size + HEADER.unpack_from(request)[0]:
                request += conn.recv(65536)
            conn.sendall(self.reply(request))

    def close(self) -> None:
        self.server.close()
        self.thread.join(timeout=10)


class ShimTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.work = tempfile.mkdtemp(prefix="hostnic-shim-")
        self.sock = os.path.join(self.work, "cni.sock")

    def tearDown(self) -> None:
        import shutil
        shutil.rmtree(self.work, ignore_errors=True)

    def run_shim(self, command: str, **config: Any) -> tuple[int, Any, str]:
        config = {"cniVersion": "1.0.0", "name": "tenant", "type": "hostnic",
                  "socket": self.sock, "mac": "52:54:00:00:00:01", **config}
        env = {"PATH": os.environ["PATH"], "CNI_COMMAND": command, "CNI_CONTAINERID": "c1",
               "CNI_IFNAME": "net1", "CNI_NETNS": "", "CNI_PATH": self.work,
               "PYTHONPATH": os.getcwd()}
        done = subprocess.run(SHIM, input=json.dumps(config).encode(), env=env,
                              capture_output=True, timeout=60)
        out = done.stdout.decode().strip()
        return done.returncode, json.loads(out) if out else None, done.stderr.decode()

    def test_del_succeeds_when_nothing_listens_and_says_why(self) -> None:
        status, output, said = self.run_shim("DEL")
        self.assertEqual((status, output), (0, None))
        self.assertIn("gives back what it held when it starts", said)
        status, output, said = self.run_shim("GC")
        self.assertEqual((status, output["code"]), (1, 11))
        self.assertIn(f"hostnic does not answer on {self.sock}", output["msg"])
        self.assertEqual(self.run_shim("STATUS")[1]["code"], 50)

    def test_a_del_the_daemon_dropped_or_garbled_is_not_done(self) -> None:
        for reply in (lambda request: b"",
                      lambda request: HEADER.pack(5) + b"nope!",
                      lambda request: (lambda data: HEADER.pack(len(data)) + data)(
                          json.dumps({"exit": "0"}).encode())):
            daemon = Daemon(self.sock, reply)
            try:
                status, output, said = self.run_shim("DEL")
            finally:
                daemon.close()
                os.unlink(self.sock)
            self.assertEqual((status, output["code"]), (1, 11), said)
            self.assertNotIn("Traceback", said)

    def test_the_daemons_answer_is_printed_with_its_status(self) -> None:
        answer = {"exit": 1, "output": {"cniVersion": "1.0.0", "code": 100, "msg": "busy"}}
        daemon = Daemon(self.sock, lambda request: HEADER.pack(len(json.dumps(answer)))
                        + json.dumps(answer).encode())
        try:
            status, output, _ = self.run_shim("DEL")
        finally:
            daemon.close()
        self.assertEqual((status, output), (1, answer["output"]))

    def test_version_needs_no_daemon(self) -> None:
        self.assertEqual(self.run_shim("VERSION")[:2], (0, {
            "cniVersion": "1.0.0", "supportedVersions": ["0.4.0", "1.0.0", "1.1.0"]}))
        status, output, _ = self.run_shim("BOGUS")
        self.assertEqual((status, output["code"]), (1, 4))


class SharedWordsTests(SynchronousTestCase):
    """The plugin keeps to the standard library, so it repeats a few of the
    daemon's words: they must be the same."""

    def test_versions_codes_and_framing_agree_with_the_daemons(self) -> None:
        from hostnic import cnishim
        from hostnic.api import cni, cnisocket
        self.assertEqual(cnishim.VERSIONS, cni.VERSIONS)
        self.assertEqual(cnishim.HEADER.format, cnisocket.HEADER.format)
        for name in ("TRY_AGAIN_LATER", "NOT_AVAILABLE", "INVALID_CONFIG", "DECODING_FAILURE",
                     "INVALID_ENVIRONMENT", "IO_FAILURE"):
            self.assertEqual(getattr(cnishim, name), getattr(cni, name), name)
        from hostnic.daemon.tap import DEFAULT_CNI
        self.assertEqual(f"unix:{cnishim.DEFAULT_SOCKET}:mode=600:lockfile=1", DEFAULT_CNI)
