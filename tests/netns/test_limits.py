"""The installed daemon against hostile clients and broken surroundings, over
real sockets: idle and trickling connections, connection floods, oversized
unauthenticated bodies, a full disk, a damaged state file, tokens anyone can
read, and systemd's watchdog."""

from __future__ import annotations

import os
import resource
import socket
import subprocess
import time

import pytest

from hostnic.state.store import StateStore
from tests.fakes import run_now
from tests.netns.nsutil import ip
from tests.netns.test_daemon import NET, TWISTD, DaemonTestCase

pytestmark = pytest.mark.netns


def raise_own_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(max(needed, soft), hard), hard))


def connect_unix(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(path)
    return sock


def closed_by_peer(sock: socket.socket, within: float) -> bool:
    sock.settimeout(within)
    try:
        while sock.recv(65536):
            pass
        return True
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


class ConnectionLimitTests(DaemonTestCase):
    def test_the_driver_answers_through_a_flood_of_idle_connections(self) -> None:
        raise_own_fd_limit(4096)
        self.start("--client-timeout", "3")
        flood = []
        for _ in range(1100):  # more than the 1,024 descriptors a default process has
            try:
                flood.append(connect_unix(self.admin_sock))
            except OSError:
                break
        self.addCleanup(lambda: [s.close() for s in flood])
        # Past its cap the admin endpoint closes new connections at once...
        self.assertTrue(closed_by_peer(flood[-1], 5))
        # ...and the driver API still answers.
        self.assertEqual(self.call("Plugin.Activate", None), {"Implements": ["NetworkDriver"]})
        # The idle ones are dropped after --client-timeout.
        time.sleep(3.5)
        self.assertTrue(closed_by_peer(flood[0], 2))
        with open(os.path.join(self.work, "plugin.log")) as f:
            log = f.read()
        self.assertIn("refused ", log)
        self.assertLess(log.count("refused "), 30)  # a flood does not flood the log
        self.assertNotIn("Traceback", log)

    def test_a_client_that_trickles_bytes_is_dropped(self) -> None:
        self.start("--client-timeout", "2")
        sock = connect_unix(self.sock)
        started = time.monotonic()
        dropped = False
        for byte in b"POST /Plugin.Activate HTTP/1.1\r\nHost: x\r\n":
            try:
                sock.send(bytes([byte]))
            except OSError:
                dropped = True
                break
            if closed_by_peer(sock, 0.3):
                dropped = True
                break
        self.assertTrue(dropped)
        self.assertLess(time.monotonic() - started, 4)


class TokenTests(DaemonTestCase):
    def tcp_port(self) -> int:
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        probe.close()
        return port

    def token_file(self, mode: int) -> str:
        path = os.path.join(self.work, f"token{mode:o}")
        with open(path, "w") as f:
            f.write("s3cret\n")
        os.chmod(path, mode)
        return path

    def refused_start(self, *args: str) -> str:
        result = subprocess.run(
            ["ip", "netns", "exec", self.ns, TWISTD, "-n", "--pidfile=", "hostnic",
             "--socket", f"unix:{self.sock}", "--state-dir", os.path.join(self.work, "s"),
             "--cni", f"unix:{self.work}/cni.sock", *args], capture_output=True, text=True,
            timeout=60)
        self.assertNotEqual(result.returncode, 0)
        self.assertNotIn("Traceback", result.stdout + result.stderr)
        return result.stdout + result.stderr

    def test_network_admin_endpoints_need_a_private_token(self) -> None:
        port = self.tcp_port()
        for endpoint in (f"tcp:{port}:interface=127.0.0.1", "systemd:domain=INET:index=0",
                         f"tcp6:{port}:interface=\\:\\:1"):
            self.assertIn("needs --admin-token-file", self.refused_start("--admin", endpoint))
        self.assertIn("chmod 600 it", self.refused_start(
            "--admin", f"tcp:{port}:interface=127.0.0.1",
            "--admin-token-file", self.token_file(0o644)))

    def test_an_unauthenticated_body_is_not_read(self) -> None:
        port = self.tcp_port()
        self.admin_sock = "unused"
        self.start("--admin", f"tcp:{port}:interface=127.0.0.1",
                   "--admin-token-file", self.token_file(0o600))
        # Reach the daemon in its namespace through a socket made there.
        answer = subprocess.run(
            ["ip", "netns", "exec", self.ns, "python3", "-c", HUGE_UNAUTHENTICATED, str(port)],
            capture_output=True, text=True, timeout=60)
        self.assertEqual(answer.returncode, 0, answer.stderr)
        status, sent, seconds = answer.stdout.split()
        self.assertEqual(status, "401")
        self.assertEqual(sent, "0")  # answered before a byte of the 100 MB body was sent
        self.assertLess(float(seconds), 2)


HUGE_UNAUTHENTICATED = """
import socket, sys, time
port = int(sys.argv[1])
for _ in range(100):
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        break
    except OSError:
        time.sleep(0.1)
started = time.monotonic()
sock.sendall(b"POST /rpc HTTP/1.1\\r\\nHost: x\\r\\nContent-Length: 100000000\\r\\n"
             b"Authorization: bearer wrong\\r\\n\\r\\n")
reply = sock.recv(4096)
print(reply.split()[1].decode(), 0, round(time.monotonic() - started, 3))
"""


class StartupTests(DaemonTestCase):
    def test_a_damaged_state_file_stops_the_start_with_one_sentence(self) -> None:
        state = os.path.join(self.work, "state")
        os.makedirs(state)
        path = os.path.join(state, "state.json")
        damaged = b'{"version": 2, "networks": [{"id": "' + NET.encode() + b'", "pool": "52:54'
        with open(path, "wb") as f:
            f.write(damaged)
        result = subprocess.run(
            ["ip", "netns", "exec", self.ns, TWISTD, "-n", "--pidfile=", "hostnic",
             "--socket", f"unix:{self.sock}", "--admin", f"unix:{self.admin_sock}",
             "--cni", f"unix:{self.work}/cni.sock", "--state-dir", state],
            capture_output=True, text=True, timeout=60)
        self.assertEqual(result.returncode, 1)
        lines = (result.stdout + result.stderr).strip().splitlines()
        self.assertEqual(len(lines), 1, lines)
        self.assertTrue(lines[0].startswith(f"hostnic cannot start: the state file {path} "
                                            f"is damaged ("), lines[0])
        with open(path, "rb") as f:
            self.assertEqual(f.read(), damaged)

    def test_watchdog_pings_come_from_the_reactor(self) -> None:
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify_path = os.path.join(self.work, "notify")
        notify.bind(notify_path)
        notify.settimeout(5)
        self.addCleanup(notify.close)
        env = {**os.environ, "NOTIFY_SOCKET": notify_path, "WATCHDOG_USEC": "400000"}
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", self.ns, TWISTD, "-n", "--pidfile=", "hostnic",
             "--socket", f"unix:{self.sock}", "--admin", f"unix:{self.admin_sock}",
             "--cni", f"unix:{self.work}/cni.sock",
             "--state-dir", os.path.join(self.work, "state")],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.addCleanup(self.kill)
        messages = []
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            messages.append(notify.recv(4096).decode())
        pings = [m for m in messages if m == "WATCHDOG=1"]
        self.assertIn("READY=1\nSTATUS=serving", messages)
        self.assertGreaterEqual(len(pings), 10)  # every 0.2 s: half of WatchdogSec
        # A wedged reactor stops the pings (systemd then restarts hostnic).
        os.kill(self.proc.pid, 19)  # SIGSTOP
        self.addCleanup(lambda: os.kill(self.proc.pid, 18))  # type: ignore[union-attr]
        time.sleep(0.3)
        notify.settimeout(0.1)
        while True:  # what was sent before the stop
            try:
                notify.recv(4096)
            except socket.timeout:
                break
        notify.settimeout(1)
        self.assertRaises(socket.timeout, notify.recv, 4096)


class FullDiskTests(DaemonTestCase):
    def test_a_full_state_filesystem_refuses_changes_and_keeps_the_state_whole(self) -> None:
        state = os.path.join(self.work, "state")
        os.makedirs(state)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "hostnic-test", state],
                       check=True)
        self.addCleanup(subprocess.run, ["umount", "-l", state], check=False)
        macs = [self.veth(f"v{i}") for i in range(40)]
        self.start()
        self.assertEqual(self.create_network("a" * 64, macs[0]), {})
        with open(os.path.join(state, "filler"), "wb") as f:  # fill the filesystem
            try:
                f.write(b"x" * (1 << 20))
            except OSError:
                pass
        # The journal's last page still has room for a few records; then a
        # record is cut short by the full disk and refused.
        answer: dict[str, str] = {}
        networks = 1
        for i, mac in enumerate(macs[1:], 1):
            answer = self.create_network(f"{i:064x}", mac)
            if answer != {}:
                break
            networks += 1
        self.assertIn("could not save its state", answer.get("Err", ""))
        self.assertIn("No space left on device", answer["Err"])
        refused = f"{networks:064x}"
        on_disk = StateStore(state, run_now).read()[0]  # whole, without the refused network
        self.assertEqual(len(on_disk.networks), networks)
        self.assertNotIn(refused, on_disk.networks)
        self.assertNotIn(".tmp.", " ".join(os.listdir(state)))
        # Still full: every change is refused, none half-made.
        self.assertIn("could not save", self.create_network(refused, macs[networks]).get("Err", ""))
        os.unlink(os.path.join(state, "filler"))
        self.kill()
        self.start()  # the next start reads it
        self.assertEqual(self.create_network(refused, macs[networks]), {})
        self.assertIn("already in hostnic network",
                      self.create_network("e" * 64, macs[0]).get("Err", ""))
        ip("-n", self.ns, "link", "show")  # the namespace is still fine
