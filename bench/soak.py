"""SIGKILL soak: the installed daemon, real veth NICs and a dockerd-like client
that retries every call whose connection dropped, while hostnic is killed at
every phase of a lifecycle (``HOSTNIC_CRASH_AT``, see hostnic/faults.py) and at
random instants.

The client plays dockerd: CreateNetwork, CreateEndpoint, Join, moving the
NIC into a container namespace by its SrcName (renamed eth0, addressed, up),
Leave, moving it back (down, renamed SrcName), DeleteEndpoint, DeleteNetwork.
It keeps a journal of acknowledged calls and, after every restart, checks
that what was acknowledged is still held. At the end every NIC must be home
exactly as it was at the start (name, MAC, MTU, admin state, addresses) and
no network or claim left.

    python bench/soak.py --kills 500       # the long run (root)
The suite runs a short one: tests/netns/test_soak.py.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

from hostnic.ctl import UnixHTTPConnection
from hostnic.faults import POINTS

TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")
CTL = os.path.join(os.path.dirname(sys.executable), "hostnic-ctl")
TRANSPORT = (OSError, http.client.HTTPException, ValueError)


def ip(*args: str) -> str:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout


class Soak:
    def __init__(self, nics: int = 3, seed: int = 1, log: Any = None) -> None:
        self.rng = random.Random(seed)
        self.tag = f"{os.getpid()}x{seed}"
        self.ns = f"hnsoak{self.tag}"
        self.peers = f"hnsoakp{self.tag}"
        self.work = tempfile.mkdtemp(prefix="hostnic-soak-")
        self.sock = os.path.join(self.work, "hostnic.sock")
        self.admin = os.path.join(self.work, "admin.sock")
        self.log = log or sys.stdout
        self.proc: subprocess.Popen[bytes] | None = None
        self.crash_plan: list[str] = []
        self.figures = {"kills": 0, "crash_point_kills": 0, "random_kills": 0,
                        "lifecycles": 0, "calls": 0, "retries": 0, "lost_networks": 0,
                        "lost_claims": 0, "lost_nics": 0, "absent_src_names": 0,
                        "nics_not_restored": 0}
        self.sandboxes: list[str] = []
        self.killed_at: set[str] = set()
        for netns in (self.ns, self.peers):
            ip("netns", "add", netns)
        ip("-n", self.ns, "link", "set", "lo", "up")
        self.nics = []
        for i in range(nics):
            name = f"ens{10 + i}"
            ip("-n", self.ns, "link", "add", name, "mtu", str(1500 + 100 * i), "type", "veth",
               "peer", "name", f"p{i}", "netns", self.peers)
            ip("-n", self.ns, "addr", "add", f"10.{60 + i}.0.5/24", "dev", name)
            if i % 2 == 0:
                ip("-n", self.ns, "link", "set", name, "up")
            self.nics.append(name)
        self.before = {nic["address"]: nic for nic in (self.snapshot(n) for n in self.nics)}

    # -- the host --------------------------------------------------------

    def links(self, netns: str) -> list[dict[str, Any]]:
        shown: list[dict[str, Any]] = json.loads(ip("-n", netns, "-j", "addr", "show"))
        return shown

    def snapshot(self, name: str) -> dict[str, Any]:
        link = next(l for l in self.links(self.ns) if l["ifname"] == name)
        return self.describe(link)

    @staticmethod
    def describe(link: dict[str, Any]) -> dict[str, Any]:
        return {"name": link["ifname"], "address": link["address"], "mtu": link["mtu"],
                "up": "UP" in link["flags"],
                "addresses": sorted(f"{a['local']}/{a['prefixlen']}" for a in link["addr_info"]
                                    if a.get("scope") != "link")}

    def home_state(self) -> dict[str, dict[str, Any]]:
        return {l["address"]: self.describe(l) for l in self.links(self.ns)
                if l["address"] in self.before}

    # -- the daemon, as systemd restarts it --------------------------------

    def start(self) -> None:
        env = dict(os.environ)
        env.pop("HOSTNIC_CRASH_AT", None)
        if self.crash_plan:
            env["HOSTNIC_CRASH_AT"] = self.crash_plan.pop(0)
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", self.ns, TWISTD, "-n", "--pidfile=", "hostnic",
             "--socket", f"unix:{self.sock}:lockfile=1",
             "--admin", f"unix:{self.admin}:mode=600:lockfile=1",
             "--state-dir", os.path.join(self.work, "state")],
            env=env, stdout=open(os.path.join(self.work, "plugin.log"), "ab"),
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.crash_point = env.get("HOSTNIC_CRASH_AT")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)

    def reap(self) -> None:
        """The daemon died (or was killed): count it, restart it, check it."""
        assert self.proc is not None
        self.proc.wait(timeout=30)
        self.figures["kills"] += 1
        if self.proc.returncode == -signal.SIGKILL and self.crash_point and not self.random_kill:
            self.figures["crash_point_kills"] += 1
            self.killed_at.add(self.crash_point)
        self.random_kill = False
        self.start()
        self.wait_ready()
        self.audit()

    def wait_ready(self) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                self._post("Plugin.Activate", None)
                return
            except TRANSPORT:
                if not self.alive():
                    self.reap()
                    return
                time.sleep(0.02)
        raise RuntimeError("hostnic did not come back: " + self.plugin_log()[-2000:])

    def plugin_log(self) -> str:
        with open(os.path.join(self.work, "plugin.log"), errors="replace") as f:
            return f.read()

    # -- dockerd's calls -------------------------------------------------

    def _post(self, method: str, body: Any) -> dict[str, Any]:
        connection = UnixHTTPConnection(self.sock, 30)
        try:
            connection.request("POST", f"/{method}",
                               body=b"" if body is None else json.dumps(body))
            answer: dict[str, Any] = json.loads(connection.getresponse().read())
            return answer
        finally:
            connection.close()

    def call(self, method: str, body: Any) -> dict[str, Any]:
        """As dockerd's plugin client: a dropped connection is retried, the same call."""
        for attempt in range(100):
            self.figures["calls"] += 1
            try:
                return self._post(f"NetworkDriver.{method}", body)
            except TRANSPORT:
                self.figures["retries"] += 1
                if not self.alive():
                    self.reap()
                else:
                    time.sleep(0.01)
        raise RuntimeError(f"{method} never answered")

    # -- the journal of acknowledged calls ---------------------------------

    def audit(self) -> None:
        """What was acknowledged before the crash must still be held: every
        network not deleted, and every endpoint created and not yet left."""
        state = self.admin_call("endpoints.list")
        held_endpoints = {e["endpoint"] for e in state}
        networks = {n["id"] for n in self.admin_call("networks.list")}
        for network in self.acked_networks:
            if network not in networks:
                self.figures["lost_networks"] += 1
                self.log.write(f"lost network {network[:12]}\n")
        for endpoint in self.acked_endpoints:
            if endpoint not in held_endpoints:
                self.figures["lost_claims"] += 1
                self.log.write(f"lost claim {endpoint[:12]}\n")

    def admin_call(self, method: str) -> Any:
        deadline = time.monotonic() + 20
        while True:  # the admin socket may listen a moment after the driver's
            result = subprocess.run([CTL, "--admin", self.admin, "--json",
                                     method.split(".")[0]],
                                    capture_output=True, text=True, timeout=30)
            if result.returncode == 0:
                return json.loads(result.stdout)
            if "cannot reach" not in result.stderr or time.monotonic() > deadline:
                raise RuntimeError(f"hostnic-ctl {method}: {result.stderr.strip()}")
            if not self.alive():
                # A crash point met during the start-up reconciliation itself.
                self.reap()
                deadline = time.monotonic() + 20
            time.sleep(0.05)

    # -- one lifecycle ---------------------------------------------------

    def lifecycle(self, n: int) -> None:
        network = f"{0xa0000000 + n:064x}"
        endpoint = f"{self.rng.getrandbits(256):064x}"
        sandbox = f"hnsoaks{self.tag}n{n}"
        ip("netns", "add", sandbox)
        self.sandboxes.append(sandbox)
        macs = list(self.before)
        self.rng.shuffle(macs)
        ref = {"NetworkID": network, "EndpointID": endpoint}
        answer = self.call("CreateNetwork", {
            "NetworkID": network,
            "Options": {"com.docker.network.generic": {"hostnic_mac": macs[0]}},
            "IPv4Data": [{"Pool": "10.9.0.0/24", "Gateway": "10.9.0.1/24"}]})
        assert answer == {}, answer
        self.acked_networks.add(network)
        answer = self.call("CreateEndpoint", {**ref, "Interface": {"Address": "10.9.0.10/24"}})
        assert "Err" not in answer, answer
        self.acked_endpoints.add(endpoint)
        answer = self.call("Join", {**ref, "SandboxKey": f"/run/netns/{sandbox}"})
        assert "Err" not in answer, answer
        src = answer["InterfaceName"]["SrcName"]
        if src not in {l["ifname"] for l in self.links(self.ns)}:
            self.figures["absent_src_names"] += 1
            self.log.write(f"Join answered {src}, which is not in the host namespace\n")
        else:
            ip("-n", self.ns, "link", "set", src, "netns", sandbox)
            ip("-n", sandbox, "link", "set", src, "name", "eth0")
            ip("-n", sandbox, "addr", "add", "10.9.0.10/24", "dev", "eth0")
            ip("-n", sandbox, "link", "set", "eth0", "up")
        # Now and then dockerd's Leave is lost (it ignores Leave's errors), so
        # DeleteEndpoint finds the endpoint joined.
        if n % 3 != 2:
            self.call("Leave", ref)
        # Once dockerd said Leave (or moved the NIC home), hostnic may release
        # the claim on its own at a restart: it is no longer owed.
        self.acked_endpoints.discard(endpoint)
        if src not in {l["ifname"] for l in self.links(self.ns)}:
            ip("-n", sandbox, "link", "set", "eth0", "down")
            ip("-n", sandbox, "link", "set", "eth0", "name", src)
            ip("-n", sandbox, "link", "set", src, "netns", self.ns)
        self.call("DeleteEndpoint", ref)
        self.call("DeleteNetwork", {"NetworkID": network})
        self.acked_networks.discard(network)
        ip("netns", "del", sandbox)
        self.sandboxes.remove(sandbox)
        self.figures["lifecycles"] += 1

    def run(self, kills: int, random_share: float = 0.3) -> dict[str, int]:
        self.acked_networks: set[str] = set()
        self.acked_endpoints: set[str] = set()
        self.random_kill = False
        # Every crash point at least once, in turn, then random instants too.
        self.crash_plan = [POINTS[i % len(POINTS)] for i in range(kills)]
        self.start()
        self.wait_ready()
        n = 0
        while self.figures["kills"] < kills and n < kills * 20:
            timer = None
            if self.rng.random() < random_share:
                armed = self.proc

                def kill_now() -> None:
                    if self.proc is armed and self.alive():
                        self.random_kill = True
                        self.figures["random_kills"] += 1
                        self.kill()
                timer = threading.Timer(self.rng.uniform(0, 0.06), kill_now)
                timer.start()
            self.lifecycle(n)
            if timer is not None:
                timer.cancel()
                timer.join()
            n += 1
        self.kill()
        self.start()
        self.wait_ready()
        self.audit()
        after = self.home_state()
        for mac, state in self.before.items():
            if mac not in after:
                self.figures["lost_nics"] += 1
            elif after[mac] != state:
                self.figures["nics_not_restored"] += 1
                self.log.write(f"NIC {mac}: {after[mac]} != {state}\n")
        self.figures["leftover_claims"] = len(self.admin_call("endpoints.list"))
        self.figures["leftover_networks"] = len(self.admin_call("networks.list"))
        return self.figures

    def close(self) -> None:
        if self.proc is not None and self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        for netns in [*self.sandboxes, self.ns, self.peers]:
            subprocess.run(["ip", "netns", "del", netns], check=False)
        shutil.rmtree(self.work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("the soak needs root (namespaces and veths)")
    soak = Soak(seed=args.seed)
    started = time.monotonic()
    try:
        figures = soak.run(args.kills)
    finally:
        soak.close()
    print(json.dumps({**figures, "seconds": round(time.monotonic() - started, 1),
                      "crash_points_hit": sorted(soak.killed_at)}, indent=1))
    bad = ("lost_networks", "lost_claims", "lost_nics", "absent_src_names",
           "nics_not_restored", "leftover_claims", "leftover_networks")
    if any(figures.get(k) for k in bad):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
