"""A namespace handed over (hostnic.kernel.sandbox) is enough for hostnic to
move a NIC in, configure it there and bring it home with the service unit's
capabilities alone: a process bounded as the unit bounds hostnic cannot enter
the namespace, and needs not."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from hostnic.cnishim import hand_over
from tests.netns.nsutil import NetnsTestCase, ip

pytestmark = pytest.mark.netns
UNIT = Path(__file__).resolve().parents[2] / "debian" / "hostnic.service"

# Runs as the unit runs hostnic, in the host namespace, with the handed
# descriptors; one step per run, so the test looks between them.
STEP = r"""
import ctypes, json, socket, sys
from hostnic.errors import HostError
from hostnic.kernel import sandbox
from hostnic.state.model import Address, NicRef, Route
step, key, netns, sock, arg = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
caps = next(l.split()[1] for l in open("/proc/self/status") if l.startswith("CapEff"))
libc = ctypes.CDLL(None, use_errno=True)
entered = libc.setns(netns, 0x40000000) == 0
pod = sandbox.Sandbox.handed(key, netns, socket.socket(fileno=sock))
if step == "in":
    moved = sandbox.move_in(int(arg), pod, "net1")
    sandbox.configure(pod, moved.index, 1400, (Address(2, "10.8.0.5", 24),),
                      (Route(2, "10.9.0.0", 16, "10.8.0.1"),))
    inside = sandbox.look(pod, "net1")
    seen = [inside.link.name, inside.link.mtu, inside.link.up,
            [a.cidr for a in inside.addresses if a.global_scope], [r.dst for r in inside.routes]]
else:
    back = sandbox.bring_home(pod, NicRef(arg), "net1", "hnback0", None)
    seen = [back.name, back.mac]
print(json.dumps({"caps": caps, "entered": entered, "seen": seen}))
"""


class HandedNamespaceTests(NetnsTestCase):
    def unit_bounding_set(self) -> str:
        line = next(l for l in UNIT.read_text().splitlines()
                    if l.startswith("CapabilityBoundingSet="))
        caps = line.partition("=")[2].split()
        return "-all," + ",".join("+" + c.lower().removeprefix("cap_") for c in caps)

    def step(self, name: str, key: str, netns: int, sock: int, arg: str) -> dict:
        result = subprocess.run(
            ["ip", "netns", "exec", self.ns, "setpriv",
             f"--bounding-set={self.unit_bounding_set()}", "--inh-caps=-all",
             "--no-new-privs", sys.executable, "-c", STEP, name, key, str(netns), str(sock),
             arg], pass_fds=(netns, sock), capture_output=True, text=True, timeout=60,
            cwd=Path(__file__).resolve().parents[2])
        self.assertEqual(result.returncode, 0, result.stderr)
        answer: dict = json.loads(result.stdout)
        return answer

    def datagram(self, source: str, target: str, address: str) -> str:
        """A UDP datagram sent from namespace ``source`` to ``address`` in
        ``target``: what arrived (bounded in time)."""
        receiver = subprocess.Popen(
            ["ip", "netns", "exec", target, sys.executable, "-c",
             "import socket, sys; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
             f"s.bind(('{address}', 4789)); s.settimeout(10); print('ready', flush=True); "
             "print(s.recv(100).decode(), flush=True)"],
            stdout=subprocess.PIPE, text=True)
        self.addCleanup(receiver.kill)
        assert receiver.stdout is not None
        self.assertEqual(receiver.stdout.readline().strip(), "ready")
        subprocess.run(["ip", "netns", "exec", source, sys.executable, "-c",
                        "import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM)"
                        f".sendto(b'through net1', ('{address}', 4789))"],
                       check=True, timeout=10)
        out, _ = receiver.communicate(timeout=15)
        return out.strip()

    def test_the_units_capabilities_move_configure_and_bring_home(self) -> None:
        # The NIC; its peer, holding the gateway, in a namespace of its own.
        ip("-n", self.ns, "link", "add", "ens9", "type", "veth", "peer", "name", "gw0",
           "netns", self.sandbox)
        ip("-n", self.sandbox, "addr", "add", "10.8.0.1/24", "dev", "gw0")
        ip("-n", self.sandbox, "link", "set", "gw0", "up")
        [nic] = json.loads(ip("-n", self.ns, "-j", "link", "show", "ens9"))
        index, mac = nic["ifindex"], nic["address"]
        pod = f"hnp{uuid.uuid4().hex[:8]}"
        ip("netns", "add", pod)
        self.addCleanup(ip, "netns", "del", pod, check=False)
        key = f"/run/netns/{pod}"
        netns, sock = hand_over(key)
        self.addCleanup(os.close, netns)
        self.addCleanup(sock.close)

        moved = self.step("in", key, netns, sock.fileno(), str(index))
        # CAP_NET_ADMIN only: it could not enter the namespace, and did not need to.
        self.assertEqual(int(moved["caps"], 16), 1 << 12)
        self.assertFalse(moved["entered"])
        self.assertEqual(moved["seen"], ["net1", 1400, True, ["10.8.0.5/24"], ["10.9.0.0"]])
        # Traffic flows from the namespace through the NIC to the gateway.
        self.assertEqual(self.datagram(pod, self.sandbox, "10.8.0.1"), "through net1")

        back = self.step("home", key, netns, sock.fileno(), mac)
        self.assertEqual(back["seen"], ["hnback0", mac])
        self.assertNotIn("net1", ip("-n", pod, "-br", "link"))
        self.assertIn("hnback0", ip("-n", self.ns, "-br", "link"))
