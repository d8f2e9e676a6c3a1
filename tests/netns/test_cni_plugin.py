"""The CNI plugin executed as the spec describes, against the installed daemon:
``hostnic-cni`` run with the ``CNI_*`` environment and a network
configuration on stdin, in namespaces the test makes, with Debian's IPAM
plugins. Each verb, the results' shapes, the errors the spec names, DEL
twice and after the namespace is gone, and a SIGKILL between ADD's steps."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from typing import Any

import pytest

from tests.netns.nsutil import ip
from tests.netns.test_daemon import CTL, DaemonTestCase

pytestmark = pytest.mark.netns
SHIM = os.path.join(os.path.dirname(sys.executable), "hostnic-cni")
PLUGINS = "/usr/lib/cni"  # Debian's containernetworking-plugins


class CNIPluginTests(DaemonTestCase):
    def setUp(self) -> None:
        super().setUp()
        if not os.access(os.path.join(PLUGINS, "static"), os.X_OK):
            self.fail("containernetworking-plugins is not installed (scripts/test installs it)")
        self.cni_sock = os.path.join(self.work, "cni.sock")
        # The NIC, configured as a host would have it; its peer, holding the
        # gateway, in a namespace of its own.
        ip("-n", self.ns, "link", "add", "ens9", "mtu", "1450", "type", "veth", "peer",
           "name", "gw0", "netns", self.sandbox)
        ip("-n", self.ns, "addr", "add", "192.168.50.4/24", "dev", "ens9")
        ip("-n", self.ns, "link", "set", "ens9", "up")
        ip("netns", "exec", self.ns, "sysctl", "-qw", "net.ipv4.conf.ens9.arp_ignore=2")
        ip("-n", self.sandbox, "addr", "add", "10.8.0.1/24", "dev", "gw0")
        ip("-n", self.sandbox, "link", "set", "gw0", "up")
        self.mac = json.loads(ip("-n", self.ns, "-j", "link", "show", "ens9"))[0]["address"]
        self.before = self.nic_at_home()
        self.pods: list[str] = []

    def pod(self) -> str:
        name = f"hnp{uuid.uuid4().hex[:8]}"
        ip("netns", "add", name)
        self.addCleanup(ip, "netns", "del", name, check=False)
        self.pods.append(name)
        return name

    def config(self, version: str = "1.0.0", **more: Any) -> dict[str, Any]:
        return {"cniVersion": version, "name": "tenant", "type": "hostnic",
                "socket": self.cni_sock, "mac": self.mac,
                "ipam": {"type": "static",
                         "addresses": [{"address": "10.8.0.5/24", "gateway": "10.8.0.1"}],
                         "routes": [{"dst": "0.0.0.0/0"}]}, **more}

    def cni(self, command: str, config: dict[str, Any], pod: str | None = None,
            container: str = "c" * 64, ifname: str = "net1") -> tuple[int, Any]:
        """The plugin run as a runtime runs it: in the host namespace, as root."""
        env = {"PATH": os.environ["PATH"], "CNI_COMMAND": command,
               "CNI_CONTAINERID": container, "CNI_IFNAME": ifname, "CNI_PATH": PLUGINS,
               "CNI_NETNS": f"/run/netns/{pod}" if pod else ""}
        done = subprocess.run(["ip", "netns", "exec", self.ns, SHIM],
                              input=json.dumps(config).encode(), env=env,
                              capture_output=True, timeout=60)
        output = done.stdout.decode().strip()
        self.assertNotIn("Traceback", done.stderr.decode())
        return done.returncode, json.loads(output) if output else None

    def nic_at_home(self) -> tuple[Any, ...]:
        [link] = json.loads(ip("-n", self.ns, "-j", "addr", "show", "ens9"))
        arp = ip("netns", "exec", self.ns, "sysctl", "-n", "net.ipv4.conf.ens9.arp_ignore")
        return (link["ifname"], link["address"], link["mtu"], "UP" in link["flags"],
                sorted(f"{a['local']}/{a['prefixlen']}" for a in link["addr_info"]
                       if a.get("scope") == "global"), arp.strip())

    def inside(self, pod: str, name: str = "net1") -> tuple[Any, ...]:
        [link] = json.loads(ip("-n", pod, "-j", "addr", "show", name))
        return (link["address"], link["mtu"], "UP" in link["flags"],
                sorted(f"{a['local']}/{a['prefixlen']}" for a in link["addr_info"]
                       if a.get("scope") == "global"),
                ip("-n", pod, "route", "show", "default").split()[:3])

    def claims(self) -> list[Any]:
        listed = subprocess.run(["ip", "netns", "exec", self.ns, CTL, "--admin",
                                 self.admin_sock, "--json", "endpoints"],
                                capture_output=True, text=True, timeout=30)
        self.assertEqual(listed.returncode, 0, listed.stderr)
        found: list[Any] = json.loads(listed.stdout)
        return found

    def datagram(self, pod: str) -> str:
        """A UDP datagram from the pod to the gateway: what arrived."""
        receiver = subprocess.Popen(
            ["ip", "netns", "exec", self.sandbox, sys.executable, "-c",
             "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
             "s.bind(('10.8.0.1', 4789)); s.settimeout(10); print('ready', flush=True); "
             "print(s.recv(100).decode(), flush=True)"], stdout=subprocess.PIPE, text=True)
        self.addCleanup(receiver.kill)
        assert receiver.stdout is not None
        self.assertEqual(receiver.stdout.readline().strip(), "ready")
        subprocess.run(["ip", "netns", "exec", pod, sys.executable, "-c",
                        "import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM)"
                        ".sendto(b'through the NIC', ('10.8.0.1', 4789))"],
                       check=True, timeout=10)
        out, _ = receiver.communicate(timeout=15)
        return out.strip()

    def start_armed(self, point: str) -> None:
        """The daemon, to SIGKILL itself at crash point ``point``."""
        os.environ["HOSTNIC_CRASH_AT"] = point
        try:
            self.start()
        finally:
            del os.environ["HOSTNIC_CRASH_AT"]

    # -- the verbs -----------------------------------------------------------

    def test_add_check_del_as_the_spec_describes(self) -> None:
        self.start()
        self.assertEqual(self.cni("VERSION", {"cniVersion": "1.0.0"}),
                         (0, {"cniVersion": "1.0.0",
                              "supportedVersions": ["0.4.0", "1.0.0", "1.1.0"]}))
        pod = self.pod()
        status, result = self.cni("ADD", self.config("1.1.0", mtu=1400), pod)
        self.assertEqual(status, 0, result)
        self.assertEqual(result["interfaces"], [{"name": "net1", "mac": self.mac, "mtu": 1400,
                                                 "sandbox": f"/run/netns/{pod}"}])
        self.assertEqual(result["ips"], [{"address": "10.8.0.5/24", "gateway": "10.8.0.1",
                                          "interface": 0}])
        self.assertEqual(self.inside(pod), (self.mac, 1400, True, ["10.8.0.5/24"],
                                            ["default", "via", "10.8.0.1"]))
        self.assertEqual(self.datagram(pod), "through the NIC")
        self.assertNotIn("ens9", ip("-n", self.ns, "-br", "link"))
        checked = self.config("1.1.0", mtu=1400, prevResult=result)
        self.assertEqual(self.cni("CHECK", checked, pod), (0, None))
        ip("-n", pod, "addr", "flush", "dev", "net1")
        status, error = self.cni("CHECK", checked, pod)
        self.assertEqual((status, error["code"]), (1, 102))
        self.assertIn("address 10.8.0.5/24 is missing", error["details"])

        self.assertEqual(self.cni("DEL", self.config(), pod), (0, None))
        self.assertEqual(self.nic_at_home(), self.before)
        self.assertEqual(self.claims(), [])
        self.assertEqual(self.cni("DEL", self.config(), pod), (0, None))  # again

    def test_status_gc_and_each_versions_result(self) -> None:
        self.start()
        self.assertEqual(self.cni("STATUS", self.config()), (0, None))
        for version in ("0.4.0", "1.0.0", "1.1.0"):
            pod = self.pod()
            status, result = self.cni("ADD", self.config(version), pod)
            self.assertEqual((status, result["cniVersion"]), (0, version), result)
            self.assertEqual("mtu" in result["interfaces"][0], version == "1.1.0")
            self.assertEqual(result["ips"][0].get("version"), "4" if version == "0.4.0" else None)
            status, error = self.cni("STATUS", self.config())
            self.assertEqual((status, error["code"]), (1, 50))  # its one NIC is taken
            # GC with no valid attachment takes it back (from the held namespace).
            valid = self.config(version, **{"cni.dev/valid-attachments": []})
            self.assertEqual(self.cni("GC", valid), (0, None))
            self.assertEqual(self.nic_at_home(), self.before)
            self.assertEqual(self.claims(), [])

    def test_add_refuses_an_ifname_the_namespace_has_and_leaves_nothing(self) -> None:
        self.start()
        pod = self.pod()
        ip("-n", pod, "link", "add", "net1", "type", "veth", "peer", "name", "other1")
        status, error = self.cni("ADD", self.config(), pod)
        self.assertEqual(status, 1)
        self.assertEqual((error["code"], error["cniVersion"]), (101, "1.0.0"))
        self.assertIn("an interface named net1 exists in", error["msg"])
        self.assertEqual(self.nic_at_home(), self.before)
        self.assertEqual(self.claims(), [])

    def test_del_after_the_namespace_is_gone_brings_the_nic_home(self) -> None:
        """As containerd's ctr does: DEL once the task is gone, with no
        CNI_NETNS. hostnic held the namespace its ADD was handed, so the NIC
        is still there (a veth would have died with it, and a physical NIC
        gone to the machine's first namespace) and comes home."""
        self.start()
        pod = self.pod()
        self.assertEqual(self.cni("ADD", self.config(), pod)[0], 0)
        ip("netns", "del", pod)
        self.assertEqual(self.cni("DEL", self.config()), (0, None))
        self.assertEqual(self.nic_at_home(), self.before)
        self.assertEqual(self.claims(), [])
        # After a restart nothing is held: DEL of a gone namespace still succeeds.
        pod = self.pod()
        self.assertEqual(self.cni("ADD", self.config(), pod)[0], 0)
        self.kill()
        self.start()
        ip("netns", "del", pod)  # (the veth dies with it)
        self.assertEqual(self.cni("DEL", self.config(), pod), (0, None))

    def test_without_the_daemon_add_says_so_and_del_succeeds(self) -> None:
        pod = self.pod()
        status, error = self.cni("ADD", self.config(), pod)
        self.assertEqual((status, error["code"]), (1, 11))
        self.assertIn(f"hostnic does not answer on {self.cni_sock}", error["msg"])
        self.assertEqual(self.cni("DEL", self.config(), pod), (0, None))
        self.assertEqual(self.nic_at_home(), self.before)

    def test_a_sigkill_between_dels_steps_then_the_runtimes_next_del_gives_it_back(self) -> None:
        for point in ("detach.marked", "detach.home"):
            with self.subTest(point=point):
                self.start_armed(point)
                pod = self.pod()
                self.assertEqual(self.cni("ADD", self.config(), pod)[0], 0)
                status, error = self.cni("DEL", self.config(), pod)
                # Not done: the runtime asks again.
                self.assertEqual((status, error["code"]), (1, 11), error)
                assert self.proc is not None
                self.assertEqual(self.proc.wait(timeout=10), -9)
                self.start()
                self.assertEqual(self.cni("DEL", self.config(), pod), (0, None))
                self.assertEqual(self.nic_at_home(), self.before)
                self.assertEqual(self.claims(), [])
                self.kill()

    def test_a_sigkill_between_adds_steps_then_the_runtimes_del_gives_the_nic_back(self) -> None:
        for point in ("attach.claimed", "join.recorded", "join.renamed", "attach.moved"):
            with self.subTest(point=point):
                self.start_armed(point)
                pod = self.pod()
                status, error = self.cni("ADD", self.config(), pod)
                self.assertEqual(status, 1)
                self.assertIn("without an answer", error["msg"])
                assert self.proc is not None
                self.assertEqual(self.proc.wait(timeout=10), -9)  # it killed itself there
                self.start()
                self.assertEqual(self.cni("DEL", self.config(), pod), (0, None))
                deadline = time.monotonic() + 10
                while self.nic_at_home() != self.before and time.monotonic() < deadline:
                    time.sleep(0.1)
                self.assertEqual(self.nic_at_home(), self.before)
                self.assertEqual(self.claims(), [])
                self.kill()
