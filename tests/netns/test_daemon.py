"""The installed twistd plugin in a real namespace, with this test playing
dockerd: crash safety under SIGKILL and start-up reconciliation by MAC."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

import pytest

from hostnic.ctl import UnixHTTPConnection

from tests.netns.nsutil import NetnsTestCase, ip

pytestmark = pytest.mark.netns
TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")
CTL = os.path.join(os.path.dirname(sys.executable), "hostnic-ctl")
NET = "a" * 63
EP = "b" * 64


class DaemonTestCase(NetnsTestCase):
    """Starts and kills the installed daemon; talks to it as dockerd does."""

    def setUp(self) -> None:
        super().setUp()
        # Short and absolute: unix socket paths stop at 107 bytes.
        self.work = tempfile.mkdtemp(prefix="hostnic-t-")
        self.addCleanup(shutil.rmtree, self.work, True)
        self.sock = os.path.join(self.work, "hostnic.sock")
        self.admin_sock = os.path.join(self.work, "admin.sock")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, *extra: str) -> None:
        log = open(os.path.join(self.work, "plugin.log"), "ab")
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", self.ns, TWISTD, "-n", "--pidfile=", "hostnic",
             "--socket", f"unix:{self.sock}:lockfile=1",
             "--admin", f"unix:{self.admin_sock}:mode=600:lockfile=1",
             "--cni", f"unix:{self.work}/cni.sock:mode=600:lockfile=1",
             "--state-dir", os.path.join(self.work, "state"), *extra],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.addCleanup(self.kill)
        self.wait_started()

    def wait_started(self) -> None:
        """Until the driver answers; fails with the log if hostnic exits first."""
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                self.call("Plugin.Activate", None)
                return
            except OSError:
                if self.proc is not None and self.proc.poll() is not None:
                    break
                time.sleep(0.05)
        with open(os.path.join(self.work, "plugin.log"), errors="replace") as f:
            raise AssertionError("hostnic did not start: " + f.read()[-2000:])

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        """As systemd stops it: SIGTERM, and a clean exit (twistd, done, ends
        itself by the signal it got, as systemd expects)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        self.assertIn(self.proc.wait(timeout=30), (0, -signal.SIGTERM))
        with open(os.path.join(self.work, "plugin.log"), errors="replace") as f:
            self.assertIn("Server Shut Down.", f.read().splitlines()[-1])

    def networks(self) -> set[str]:
        listed = ctl("--admin", self.admin_sock, "--json", "networks")
        self.assertEqual(listed.returncode, 0, listed.stderr)
        return {n["id"] for n in json.loads(listed.stdout)}

    def state_files(self) -> list[str]:
        return sorted(os.listdir(os.path.join(self.work, "state")))

    def call(self, method: str, body: Any) -> dict[str, Any]:
        connection = UnixHTTPConnection(self.sock, 10)  # a fresh connection, as dockerd does
        try:
            connection.request("POST", f"/{method}", body=b"" if body is None else json.dumps(body))
            answer: dict[str, Any] = json.loads(connection.getresponse().read())
            return answer
        finally:
            connection.close()

    def create_network(self, network_id: str, mac: str) -> dict[str, Any]:
        return self.call("NetworkDriver.CreateNetwork", {
            "NetworkID": network_id,
            "Options": {"com.docker.network.generic": {"hostnic_mac": mac}},
            "IPv4Data": [{"Pool": "10.9.0.0/24", "Gateway": "10.9.0.1/24"}]})


class DaemonTests(DaemonTestCase):
    def test_sigkill_at_any_moment_loses_no_acknowledged_change(self) -> None:
        macs = [self.veth(f"v{i}") for i in range(30)]
        self.start()
        for round_, delay in enumerate((0.0, 0.005, 0.02)):
            acknowledged: list[int] = []
            under_way = threading.Event()

            def client() -> None:
                for i in range(round_ * 10, round_ * 10 + 10):
                    try:
                        if self.create_network(f"{i:064x}", macs[i]) == {}:
                            acknowledged.append(i)
                    except (OSError, http.client.HTTPException, ValueError):
                        return
                    if len(acknowledged) == 3:
                        under_way.set()
            worker = threading.Thread(target=client)
            worker.start()
            # Killed with changes acknowledged and more in flight, never before.
            self.assertTrue(under_way.wait(timeout=20), "hostnic acknowledged nothing")
            time.sleep(delay)
            self.kill()
            worker.join(timeout=30)
            self.assertGreaterEqual(len(acknowledged), 3)
            self.start()  # the state file must load
            for i in acknowledged:
                answer = self.create_network("f" * 64, macs[i])
                self.assertIn("already in hostnic network", answer.get("Err", ""), (round_, i))

    def test_lives_after_a_busy_first_life_keep_what_each_acknowledged(self) -> None:
        """Seen on the installed daemon: 600 create/delete pairs (a compaction's
        worth of changes), then two more lives creating one network each; in
        the fourth life neither existed, without a word in the log."""
        macs = [self.veth(f"v{i}") for i in range(3)]
        self.start()
        for i in range(600):
            self.assertEqual(self.create_network(f"{i:064x}", macs[0]), {})
            self.assertEqual(self.call("NetworkDriver.DeleteNetwork",
                                       {"NetworkID": f"{i:064x}"}), {})
        self.stop()
        self.assertIn("journal.1", self.state_files())  # compacted once, at least
        second, third = "2" * 64, "3" * 64
        for network, mac in ((second, macs[1]), (third, macs[2])):
            self.start()
            self.assertEqual(self.create_network(network, mac), {})
            self.stop()
        self.start()
        self.assertEqual(self.networks(), {second, third})
        self.assertEqual(len(self.state_files()), 2, self.state_files())  # state.json, journal.N

    def test_a_torn_journal_tail_is_never_appended_after(self) -> None:
        """A crash cut the journal's last record short: the next life reads
        up to it, and must not append behind the torn bytes (the life after
        would then refuse to start on a damaged record)."""
        macs = [self.veth(f"v{i}") for i in range(2)]
        first, second = "1" * 64, "2" * 64
        self.start()
        self.assertEqual(self.create_network(first, macs[0]), {})
        self.stop()
        [journal] = [f for f in self.state_files() if f.startswith("journal.")]
        with open(os.path.join(self.work, "state", journal), "ab") as f:
            f.write(b"\x00\x00\x01\x00\x12\x34\x56\x78{\"put\": \"netw")  # cut short
        self.start()
        self.assertEqual(self.networks(), {first})
        self.assertEqual(self.create_network(second, macs[1]), {})
        self.stop()
        self.start()
        self.assertEqual(self.networks(), {first, second})

    def test_join_never_names_a_link_that_is_not_the_nic(self) -> None:
        """A link already wears the endpoint's transit name (a leftover,
        another tool): Join must refuse, naming it, and touch nothing;
        dockerd would otherwise move that link into the container."""
        mac = self.veth("ens9")
        ip("-n", self.ns, "link", "set", "ens9", "up")
        transit = "hn" + EP[:13]
        self.veth(transit)  # another link, with another MAC, under that name
        self.start()
        self.assertEqual(self.create_network(NET, mac), {})
        ref = {"NetworkID": NET, "EndpointID": EP}
        self.call("NetworkDriver.CreateEndpoint", {**ref, "Interface": {"Address": "10.9.0.10/24"}})
        answer = self.call("NetworkDriver.Join", {**ref, "SandboxKey": "/x"})
        self.assertNotIn("InterfaceName", answer)
        self.assertIn(f"interface {transit} (index", answer.get("Err", ""))
        self.assertIn(f"is not NIC {mac}", answer["Err"])
        shown = {l["ifname"]: l for l in json.loads(ip("-n", self.ns, "-j", "link", "show"))}
        self.assertEqual((shown["ens9"]["address"], "UP" in shown["ens9"]["flags"]), (mac, True))
        self.assertNotEqual(shown[transit]["address"], mac)
        # Once the name is free, the same Join lends the NIC under it.
        ip("-n", self.ns, "link", "del", transit)
        lent = self.call("NetworkDriver.Join", {**ref, "SandboxKey": "/x"})
        self.assertEqual(lent["InterfaceName"]["SrcName"], transit)
        [link] = json.loads(ip("-n", self.ns, "-j", "link", "show", "dev", transit))
        self.assertEqual(link["address"], mac)

    def test_nic_returned_under_a_foreign_name_is_restored_at_start(self) -> None:
        mac = self.veth("ens9")
        ip("-n", self.ns, "link", "set", "ens9", "mtu", "1400", "up")
        ip("-n", self.ns, "addr", "add", "10.5.0.5/24", "dev", "ens9")
        self.start()
        self.assertEqual(self.create_network(NET, mac), {})
        ref = {"NetworkID": NET, "EndpointID": EP}
        self.assertEqual(self.call("NetworkDriver.CreateEndpoint", {
            **ref, "Interface": {"Address": "10.9.0.10/24"}}),
            {"Interface": {"MacAddress": mac}})
        src = self.call("NetworkDriver.Join", {**ref, "SandboxKey": "/x"})["InterfaceName"]["SrcName"]
        ip("-n", self.ns, "link", "set", src, "netns", self.sandbox)
        ip("-n", self.sandbox, "link", "set", src, "name", "eth0")
        # hostnic and dockerd die; the container's namespace goes and the kernel
        # hands the NIC back under its in-container name.
        self.kill()
        ip("-n", self.sandbox, "link", "set", "eth0", "netns", self.ns)
        self.start()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            shown = json.loads(ip("-n", self.ns, "-j", "addr", "show"))
            link = next(l for l in shown if l.get("address") == mac)
            # the name comes first and the admin state after the addresses
            if link["ifname"] == "ens9" and "UP" in link["flags"]:
                break
            time.sleep(0.05)
        self.assertEqual((link["ifname"], link["mtu"], "UP" in link["flags"]), ("ens9", 1400, True))
        self.assertIn("10.5.0.5", [a["local"] for a in link["addr_info"]])
        # dockerd cleans the stale endpoint when it comes back; the NIC is free again.
        self.assertEqual(self.call("NetworkDriver.Leave", ref), {})
        self.assertEqual(self.call("NetworkDriver.DeleteEndpoint", ref), {})
        self.assertEqual(self.call("NetworkDriver.CreateEndpoint", {
            "NetworkID": NET, "EndpointID": "c" * 64, "Interface": {"Address": "10.9.0.11/24"}}),
            {"Interface": {"MacAddress": mac}})


def ctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CTL, *args], capture_output=True, text=True, timeout=30)


class AdminDaemonTests(DaemonTestCase):
    def test_cli_against_a_running_daemon(self) -> None:
        mac = self.veth("ens9")
        ip("-n", self.ns, "addr", "add", "10.5.0.5/24", "dev", "ens9")
        self.start()
        self.assertEqual(self.create_network(NET, mac), {})
        ref = {"NetworkID": NET, "EndpointID": EP}
        self.call("NetworkDriver.CreateEndpoint", {**ref, "Interface": {"Address": "10.9.0.10/24"}})
        self.call("NetworkDriver.Join", {**ref, "SandboxKey": "/nonexistent/sandbox"})
        admin = ["--admin", self.admin_sock]

        status = ctl(*admin, "status")
        self.assertEqual(status.returncode, 0, status.stderr)
        self.assertIn("networks 1, endpoints 1, NICs claimed 1, free 0", status.stdout)
        networks = ctl(*admin, "networks").stdout.splitlines()
        self.assertEqual(networks[0].split(), ["NETWORK", "GATEWAY", "SUBNETS", "IN", "USE", "POOL"])
        self.assertIn(NET[:12], networks[1])
        self.assertIn("1/1", networks[1])
        self.assertIn("joined", ctl(*admin, "endpoints").stdout)
        nics = json.loads(ctl(*admin, "--json", "nics").stdout)
        [nic] = [n for n in nics if n["mac"] == mac]
        self.assertEqual((nic["status"], nic["driver"], nic["name"]), ("claimed", "veth", "hn" + EP[:13]))
        table = ctl(*admin, "nics").stdout
        self.assertIn("STATUS", table.splitlines()[0])
        self.assertIn("NetworkDriver.Join", ctl(*admin, "events", "-n", "5").stdout)
        self.assertEqual(json.loads(ctl(*admin, "--json", "status").stdout)["networks"], 1)
        # The daemon's own endpoint string works, and --json after the verb.
        daemon_admin = ["--admin", f"unix:{self.admin_sock}:mode=600:lockfile=1"]
        one = json.loads(ctl("nic", mac, "--json", *daemon_admin).stdout)
        self.assertEqual((one["recorded"]["name"], one["recorded"]["addresses"]),
                         ("ens9", ["10.5.0.5/24"]))
        described = ctl(*daemon_admin, "nic", "hn" + EP[:13]).stdout
        self.assertIn("recorded at the lend", described)
        self.assertIn("addresses:  10.5.0.5/24", described)
        network = ctl(*daemon_admin, "network", NET[:12])
        self.assertEqual(network.returncode, 0, network.stderr)
        self.assertIn(f"NIC {mac} (hn{EP[:13]}): endpoint {EP[:12]}", network.stdout)
        unknown = ctl(*daemon_admin, "nic", "nosuch0")
        self.assertEqual((unknown.returncode, unknown.stderr.strip()), (
            1, "hostnic-ctl: no NIC 'nosuch0' in the host namespace or in hostnic's state"))

        released = ctl(*admin, "release", mac.upper())
        self.assertEqual(released.returncode, 0, released.stderr)
        self.assertIn("released from endpoint", released.stdout)
        shown = json.loads(ip("-n", self.ns, "-j", "addr", "show", "dev", "ens9"))[0]
        self.assertIn("10.5.0.5", [a["local"] for a in shown["addr_info"]])
        again = ctl(*admin, "release", mac)
        self.assertEqual((again.returncode, again.stderr.strip()),
                         (1, f"hostnic-ctl: NIC {mac} is not claimed by any hostnic endpoint"))

        self.kill()
        down = ctl(*admin, "status")
        self.assertEqual(down.returncode, 1)
        self.assertEqual(down.stderr.count("\n"), 1)
        self.assertIn(f"hostnic-ctl: cannot reach hostnic at {self.admin_sock}", down.stderr)
        self.assertNotIn("Traceback", down.stderr)

    def test_tcp_admin_requires_a_token(self) -> None:
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        probe.close()
        refused = subprocess.run(
            ["ip", "netns", "exec", self.ns, TWISTD, "-n", "--pidfile=", "hostnic",
             "--socket", f"unix:{self.sock}", "--state-dir", os.path.join(self.work, "s"),
             "--admin", f"tcp:{port}:interface=127.0.0.1", "--cni", ""],
            capture_output=True, text=True, timeout=60)
        self.assertNotEqual(refused.returncode, 0)
        self.assertIn("needs --admin-token-file", refused.stdout + refused.stderr)

        token_file = os.path.join(self.work, "token")
        with open(token_file, "w") as f:
            f.write("s3cret\n")
        os.chmod(token_file, 0o600)
        self.admin_sock = "unused"
        self.start("--admin", f"tcp:{port}:interface=127.0.0.1", "--admin-token-file", token_file)
        admin = ["--admin", f"tcp:127.0.0.1:{port}"]
        # The daemon listens in its own namespace: reach it from there.
        def ctl_in_ns(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(["ip", "netns", "exec", self.ns, CTL, *args],
                                  capture_output=True, text=True, timeout=30)
        deadline = time.monotonic() + 10
        while "cannot reach" in (denied := ctl_in_ns(*admin, "status")).stderr \
                and time.monotonic() < deadline:
            time.sleep(0.1)
        self.assertEqual(denied.returncode, 1)
        self.assertIn("a valid --token-file is needed", denied.stderr)
        # The daemon's own --admin string reaches it too.
        allowed = ctl_in_ns("status", "--admin", f"tcp:{port}:interface=127.0.0.1",
                            "--token-file", token_file, "--json")
        self.assertEqual(allowed.returncode, 0, allowed.stderr)
        self.assertEqual(json.loads(allowed.stdout)["endpoints"]["admin"],
                         f"tcp:{port}:interface=127.0.0.1")

    def test_one_hostnic_per_host(self) -> None:
        """A second hostnic in the same network namespace (another state dir,
        another socket, as the managed plugin would be) refuses to start and
        says who holds the host; once the first dies, even by SIGKILL, the
        host is free."""
        self.start()
        assert self.proc is not None
        second = ["ip", "netns", "exec", self.ns, "env", "HOSTNIC_DEPLOYMENT=the second",
                  TWISTD, "-n", "--pidfile=", "hostnic",
                  "--socket", f"unix:{self.work}/second.sock",
                  "--admin", f"unix:{self.work}/second-admin.sock",
                  "--cni", f"unix:{self.work}/second-cni.sock",
                  "--state-dir", os.path.join(self.work, "second-state")]
        refused = subprocess.run(second, capture_output=True, text=True, timeout=60)
        said = refused.stdout + refused.stderr
        self.assertNotEqual(refused.returncode, 0)
        self.assertIn("another hostnic already hands out this host's NICs: twistd hostnic "
                      f"(pid {self.proc.pid}), driver socket unix:{self.sock}:lockfile=1", said)
        self.assertNotIn("Traceback", said)
        self.assertFalse(os.path.exists(os.path.join(self.work, "second-state")))
        self.assertFalse(os.path.exists(f"{self.work}/second.sock"))

        self.kill()
        self.sock = f"{self.work}/second.sock"
        self.proc = subprocess.Popen(second, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        self.wait_started()
