"""Socket activation as systemd does it: this test holds the listening unix
socket (mode 0660) and activates the installed daemon on it three times.

Pins hostnic.daemon.activation's fix of Twisted's adopted unix sockets: the mode
stays, the path stays, and systemd's copy keeps listening after each stop, so
a request sent while hostnic is down is answered by the next activation."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import time

import pytest

from tests.netns.nsutil import NetnsTestCase
from tests.netns.test_daemon import TWISTD

pytestmark = pytest.mark.netns
REQUEST = b"POST /Plugin.Activate HTTP/1.0\r\nContent-Length: 0\r\n\r\n"


class ActivationTests(NetnsTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.work = self.mktemp()
        os.makedirs(self.work)
        self.path = os.path.join(self.work, "hostnic.sock")
        # What systemd does for hostnic.socket.
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(self.path)
        os.chmod(self.path, 0o660)
        self.listener.listen(16)
        self.addCleanup(self.listener.close)
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(os.path.join(self.work, "notify"))
        self.notify.settimeout(30)
        self.addCleanup(self.notify.close)

    def activate(self) -> subprocess.Popen[bytes]:
        fd = self.listener.fileno()
        env = {**os.environ, "LISTEN_FDS": "1", "LISTEN_FDNAMES": "hostnic.sock",
               "NOTIFY_SOCKET": os.path.join(self.work, "notify")}
        proc = subprocess.Popen(
            ["ip", "netns", "exec", self.ns, "sh", "-c", 'export LISTEN_PID=$$; exec "$@"', "sh",
             TWISTD, "-n", "--pidfile=", "--logger", "hostnic.daemon.journald.observer", "hostnic",
             "--socket", "systemd:domain=UNIX:name=hostnic.sock",
             "--admin", f"unix:{self.work}/admin.sock", "--cni", f"unix:{self.work}/cni.sock",
             "--state-dir", os.path.join(self.work, "state")],
            env=env, close_fds=False, preexec_fn=lambda: self.as_fd3(fd),
            stdout=open(os.path.join(self.work, "log"), "ab"), stderr=subprocess.STDOUT)
        self.addCleanup(lambda: proc.poll() is None and proc.kill())
        return proc

    @staticmethod
    def as_fd3(fd: int) -> None:
        """systemd passes the socket as fd 3. dup2 onto itself keeps CLOEXEC, so
        clear it explicitly."""
        os.dup2(fd, 3)
        os.set_inheritable(3, True)

    def ask(self, sock: socket.socket) -> dict[str, object]:
        sock.settimeout(30)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        self.assertIn(b" 200 OK", head.split(b"\r\n")[0], data)
        answer: dict[str, object] = json.loads(body)
        return answer

    def test_three_activations_on_one_systemd_socket(self) -> None:
        pending: socket.socket | None = None
        for round_ in range(3):
            started = time.monotonic()
            proc = self.activate()
            self.assertEqual(self.notify.recv(4096), b"READY=1\nSTATUS=serving")
            if pending is not None:
                # Sent while hostnic was down: queued on systemd's socket.
                self.assertEqual(self.ask(pending), {"Implements": ["NetworkDriver"]})
            client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            client.connect(self.path)
            client.sendall(REQUEST)
            self.assertEqual(self.ask(client), {"Implements": ["NetworkDriver"]}, round_)
            cold_start = time.monotonic() - started
            self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o660)

            proc.send_signal(signal.SIGTERM)
            self.assertIn(proc.wait(timeout=30), (0, -signal.SIGTERM, 128 + signal.SIGTERM))
            self.assertTrue(stat.S_ISSOCK(os.stat(self.path).st_mode), "path unlinked")
            self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o660)
            self.assertEqual(self.notify.recv(4096), b"STOPPING=1")
            pending = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            pending.connect(self.path)  # still listening: not shut down
            pending.sendall(REQUEST)
        print(f"cold start to first answer: {cold_start:.2f}s")
        log = open(os.path.join(self.work, "log")).read()
        self.assertIn("<6>[hostnic.daemon.tap.HostnicService] driver API listening on", log)
