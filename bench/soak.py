"""Soak of the installed daemon: real veth NICs, a client that behaves like
dockerd's plugin client, and hostnic stopped under it over and over: SIGKILL
at every crash point of a lifecycle (``HOSTNIC_CRASH_AT``, hostnic/core/crashpoints.py),
SIGKILL at random instants, and SIGTERM (a clean stop) at random instants.
A supervisor starts it again each time, as systemd or dockerd would.

The client plays dockerd: CreateNetwork, CreateEndpoint, Join, moving the NIC
into a container namespace by its SrcName (renamed eth0, addressed, up),
Leave, moving it back (down, renamed SrcName), DeleteEndpoint, DeleteNetwork.
Like moby's plugin client it resends a call whose connection failed: with its
body if the connection was refused, without one if it dropped once the body
was sent (the buffer was drained). Then, as dockerd and its user do with the
answer: a create or Join refused for want of a body fails the command, and
the user runs it again (a new network or endpoint; what the lost create left
behind is removed the way the README tells an operator to); errors of Leave,
DeleteEndpoint and DeleteNetwork are ignored.

It keeps a journal of what hostnic acknowledged, and after every restart
checks it against the daemon's admin API: every acknowledged network and
endpoint is held, no NIC is held by two endpoints. Every Join's SrcName must
name the NIC. Once an endpoint is deleted its NIC must be home as it was
(name, MAC, MTU, admin state, addresses), at once if DeleteEndpoint was
answered, eventually if its answer was lost. At the end no claim or network
may be left, and the state directory must have been compacted (the default
period, 1,000 records) as often as asked.

    python -m bench.soak --kills 300 --lifecycles 2000 --compactions 5   # root
The suite runs a shorter one: tests/netns/test_soak.py.
"""

from __future__ import annotations

import argparse
import http.client
import itertools
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

from hostnic.core.crashpoints import POINTS
from hostnic.ctl import UnixHTTPConnection

TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")
CTL = os.path.join(os.path.dirname(sys.executable), "hostnic-ctl")
DROPPED = (OSError, http.client.HTTPException)  # the connection failed, not the answer
BAD = ("lost_networks", "lost_claims", "nics_claimed_twice", "wrong_src_names",
       "absent_src_names", "nics_not_restored", "lost_nics", "leftover_claims",
       "leftover_networks", "unexpected_drops")
RETRY_SECONDS = 60.0  # moby gives up on a plugin call after a while too


class Refused(Exception):
    """A call answered with an Err a dockerd user would see."""


def ip(*args: str, batch: str | None = None) -> str:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30,
                            input=batch)
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
        self.state = os.path.join(self.work, "state")
        self.log = log or sys.stdout
        self.proc: subprocess.Popen[bytes] | None = None
        self.crash_plan = itertools.cycle(POINTS)
        self.at_points = 0  # kills at crash points to make (run sets it)
        self.crash_point: str | None = None
        self.stopping = ""  # how the current process is being stopped, if it is
        self.figures = {
            "kills": 0, "crash_point_kills": 0, "random_kills": 0, "sigterms": 0,
            "lifecycles": 0, "calls": 0, "retries": 0, "bodyless_retries": 0,
            "bodyless_refusals": 0, "orphans_removed": 0, "compactions": 0,
            "lost_networks": 0, "lost_claims": 0, "nics_claimed_twice": 0,
            "wrong_src_names": 0, "absent_src_names": 0, "nics_not_restored": 0,
            "lost_nics": 0, "unexpected_drops": 0}
        self.stops = threading.Lock()  # the stop timer's thread and ours
        self.killed_at: set[str] = set()
        self.sandboxes: list[str] = []
        self.acked_networks: set[str] = set()
        self.acked_endpoints: set[str] = set()
        self.owed: dict[str, str] = {}  # MAC -> endpoint deleted without an answer
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

    def generation(self) -> int:
        """Which journal the snapshot names: one more per compaction."""
        try:
            with open(os.path.join(self.state, "state.json")) as f:
                return int(json.load(f).get("generation", 0))
        except FileNotFoundError:
            return 0

    # -- the daemon, as systemd or dockerd restart it ----------------------

    def start(self, armed: bool = True) -> None:
        env = dict(os.environ)
        env.pop("HOSTNIC_CRASH_AT", None)
        if armed and (self.figures["crash_point_kills"] < self.at_points
                      or self.killed_at != set(POINTS)):
            # The next crash point in turn, one not hit yet first.
            point = next(self.crash_plan)
            for _ in POINTS:
                if point not in self.killed_at:
                    break
                point = next(self.crash_plan)
            env["HOSTNIC_CRASH_AT"] = point
        process = subprocess.Popen(
            ["ip", "netns", "exec", self.ns, TWISTD, "-n", "--pidfile=", "hostnic",
             "--socket", f"unix:{self.sock}:lockfile=1",
             "--admin", f"unix:{self.admin}:mode=600:lockfile=1",
             "--cni", f"unix:{self.admin}.cni:mode=600:lockfile=1",
             "--state-dir", self.state],
            env=env, stdout=open(os.path.join(self.work, "plugin.log"), "ab"),
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        with self.stops:
            self.proc = process
            self.crash_point = env.get("HOSTNIC_CRASH_AT")
            self.stopping = ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig: int) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(sig)
            self.proc.wait(timeout=30)

    def reap(self) -> None:
        """The daemon died or was stopped: count it, start it, check it."""
        assert self.proc is not None
        self.proc.wait(timeout=30)
        if self.stopping == "sigterm":
            self.figures["sigterms"] += 1
        else:
            self.figures["kills"] += 1
            if self.stopping == "sigkill":
                self.figures["random_kills"] += 1
            elif self.proc.returncode == -signal.SIGKILL and self.crash_point:
                self.figures["crash_point_kills"] += 1
                self.killed_at.add(self.crash_point)
        self.start()
        self.wait_ready()
        self.audit()

    def wait_ready(self) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                self._post("Plugin.Activate", None)
                return
            except DROPPED:
                if not self.alive():
                    self.reap()
                    return
                time.sleep(0.02)
        raise RuntimeError("hostnic did not come back: " + self.plugin_log()[-2000:])

    def plugin_log(self) -> str:
        with open(os.path.join(self.work, "plugin.log"), errors="replace") as f:
            return f.read()

    # -- dockerd's plugin client -------------------------------------------

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
        """As moby's callWithRetry: a call whose connection failed is sent
        again, with its body only if the first attempt never got to send it.
        An answer, whatever it says, is final."""
        sent = body
        deadline = time.monotonic() + RETRY_SECONDS
        while time.monotonic() < deadline:
            self.figures["calls"] += 1
            connection = UnixHTTPConnection(self.sock, 30)
            try:
                try:
                    connection.connect()
                except OSError:  # refused: nothing was read, the body is intact
                    self.figures["retries"] += 1
                    self.wait_or_reap()
                    continue
                try:
                    connection.request("POST", f"/NetworkDriver.{method}",
                                       body=b"" if sent is None else json.dumps(sent))
                    raw = connection.getresponse().read()
                except DROPPED:
                    self.figures["retries"] += 1
                    if sent is not None:
                        self.figures["bodyless_retries"] += 1
                    sent = None  # the buffer was drained: the retry has no body
                    self.dropped(method)
                    continue
                answer: dict[str, Any] = json.loads(raw)  # not JSON: a failure
                return answer
            finally:
                connection.close()
        raise RuntimeError(f"{method} never answered in {RETRY_SECONDS:.0f} s")

    def dropped(self, method: str) -> None:
        """A connection dropped mid-call: hostnic must be going away (killed,
        stopped, or at a crash point); a live one dropping it is a failure."""
        deadline = time.monotonic() + 5
        while self.alive() and not self.stopping and time.monotonic() < deadline:
            time.sleep(0.01)
        if self.alive() and not self.stopping:
            self.figures["unexpected_drops"] += 1
            self.log.write(f"{method}: hostnic dropped the connection and lives on\n")
        self.wait_or_reap()

    def wait_or_reap(self) -> None:
        if not self.alive():
            self.reap()
        else:
            time.sleep(0.01)

    def answered(self, method: str, body: Any) -> dict[str, Any] | None:
        """The answer; None for a refusal for want of a body (what dockerd's
        empty retry gets); any other refusal is a failure of the soak."""
        answer = self.call(method, body)
        if "Err" not in answer:
            return answer
        if "came without its body" not in answer["Err"]:
            raise AssertionError(f"{method} refused: {answer['Err']}")
        self.figures["bodyless_refusals"] += 1
        return None

    def must(self, method: str, body: Any) -> dict[str, Any]:
        """A call whose refusal fails the docker command (Refused)."""
        answer = self.answered(method, body)
        if answer is None:
            raise Refused(method)
        return answer

    def ignored(self, method: str, body: Any) -> bool:
        """A call whose errors dockerd ignores; True if it was answered OK."""
        return self.answered(method, body) is not None

    # -- the operator, and the checks ----------------------------------------

    def rpc(self, method: str) -> Any:
        """A read of the admin API (JSON-RPC over its unix socket)."""
        deadline = time.monotonic() + 30
        while True:  # the admin socket may listen a moment after the driver's
            connection = UnixHTTPConnection(self.admin, 30)
            try:
                connection.request("POST", "/rpc", body=json.dumps(
                    {"jsonrpc": "2.0", "id": 1, "method": method}))
                answer = json.loads(connection.getresponse().read())
                return answer["result"]
            except DROPPED:
                if time.monotonic() > deadline:
                    raise
                if not self.alive():
                    self.reap()  # a crash point met during the start-up reconciliation
                    deadline = time.monotonic() + 30
                time.sleep(0.05)
            finally:
                connection.close()

    def ctl(self, *args: str) -> None:
        """What an operator runs (hostnic-ctl, as the README says), again if
        hostnic was down; gone already is done."""
        for _ in range(50):
            result = subprocess.run([CTL, "--admin", self.admin, *args], capture_output=True,
                                    text=True, timeout=30)
            said = result.stderr.strip()
            if result.returncode == 0 or "holds no network" in said or "is not claimed" in said:
                return
            if "cannot reach" not in said:
                raise RuntimeError(f"hostnic-ctl {' '.join(args)}: {said}")
            self.wait_or_reap()
        raise RuntimeError(f"hostnic-ctl {' '.join(args)}: {said}")

    def audit(self) -> None:
        """After a restart: everything acknowledged is held, no NIC twice."""
        endpoints = self.rpc("endpoints.list")
        held = {e["endpoint"] for e in endpoints}
        macs = [e["mac"] for e in endpoints]
        if len(macs) != len(set(macs)):
            self.figures["nics_claimed_twice"] += 1
            self.log.write(f"a NIC held by two endpoints: {sorted(macs)}\n")
        networks = {n["id"] for n in self.rpc("networks.list")}
        for network in self.acked_networks - networks:
            self.figures["lost_networks"] += 1
            self.log.write(f"lost network {network[:12]}\n")
        for endpoint in self.acked_endpoints - held:
            self.figures["lost_claims"] += 1
            self.log.write(f"lost claim {endpoint[:12]}\n")

    def remove_orphans(self, network: str | None = None, mac: str | None = None) -> None:
        """What a create refused for want of its body may have left (hostnic
        recorded it, dockerd does not know it): as the README tells an
        operator, hostnic-ctl release / network-rm."""
        if mac is not None and any(e["mac"] == mac for e in self.rpc("endpoints.list")):
            self.ctl("release", mac)
            self.figures["orphans_removed"] += 1
        if network is not None and network in {n["id"] for n in self.rpc("networks.list")}:
            self.ctl("network-rm", network)
            self.figures["orphans_removed"] += 1

    def check_home(self, mac: str, wait: float = 0.0) -> bool:
        deadline = time.monotonic() + wait
        while True:
            now = self.home_state().get(mac)
            if now == self.before[mac]:
                return True
            if time.monotonic() >= deadline:
                self.figures["nics_not_restored"] += 1
                self.log.write(f"NIC {mac}: {now} != {self.before[mac]}\n")
                return False
            time.sleep(0.2)

    def free_nic(self) -> str:
        """A NIC no endpoint holds (one whose DeleteEndpoint was lost is given
        back in the background: wait for it)."""
        deadline = time.monotonic() + 150
        while True:
            for mac in list(self.owed):
                if self.home_state().get(mac) == self.before[mac] and not any(
                        e["mac"] == mac for e in self.rpc("endpoints.list")):
                    del self.owed[mac]
            free = [mac for mac in self.before if mac not in self.owed]
            if free:
                return self.rng.choice(free)
            if time.monotonic() > deadline:
                raise RuntimeError(f"no NIC came back: {self.owed}")
            time.sleep(0.5)

    # -- one lifecycle ---------------------------------------------------

    def create_network(self, n: int, mac: str) -> str:
        for attempt in range(20):
            network = f"{0xa0000000 + n:056x}{attempt:08x}"
            try:
                self.must("CreateNetwork", {
                    "NetworkID": network,
                    "Options": {"com.docker.network.generic": {"hostnic_mac": mac}},
                    "IPv4Data": [{"Pool": "10.9.0.0/24", "Gateway": "10.9.0.1/24"}]})
            except Refused:
                self.remove_orphans(network=network)
                continue  # the user runs `docker network create` again
            self.acked_networks.add(network)
            return network
        raise RuntimeError("CreateNetwork never went through")

    def container(self, network: str, mac: str, sandbox: str) -> tuple[str, str]:
        """An endpoint joined: (endpoint id, SrcName). A refused create or
        Join fails the `docker run`; the user runs it again."""
        for _ in range(20):
            endpoint = f"{self.rng.getrandbits(256):064x}"
            ref = {"NetworkID": network, "EndpointID": endpoint}
            try:
                self.must("CreateEndpoint", {**ref, "Interface": {"Address": "10.9.0.10/24"}})
            except Refused:
                self.remove_orphans(mac=mac)
                continue
            self.acked_endpoints.add(endpoint)
            try:
                answer = self.must("Join", {**ref, "SandboxKey": f"/run/netns/{sandbox}"})
            except Refused:  # dockerd undoes the endpoint of a failed start
                self.acked_endpoints.discard(endpoint)
                self.ignored("Leave", ref)
                if self.ignored("DeleteEndpoint", ref):
                    self.check_home(mac)
                else:
                    self.owed[mac] = endpoint
                    self.check_home(mac, wait=150)
                    self.owed.pop(mac, None)
                continue
            return endpoint, answer["InterfaceName"]["SrcName"]
        raise RuntimeError("docker run never went through")

    def lifecycle(self, n: int) -> None:
        mac = self.free_nic()
        sandbox = f"hnsoaks{self.tag}n{n}"
        ip("netns", "add", sandbox)
        self.sandboxes.append(sandbox)
        network = self.create_network(n, mac)
        endpoint, src = self.container(network, mac, sandbox)
        ref = {"NetworkID": network, "EndpointID": endpoint}
        named = next((l for l in self.links(self.ns) if l["ifname"] == src), None)
        if named is None:
            self.figures["absent_src_names"] += 1
            self.log.write(f"Join answered {src}, which is not in the host namespace\n")
        elif named["address"] != mac:
            self.figures["wrong_src_names"] += 1
            self.log.write(f"Join answered {src}, which is {named['address']}, not {mac}\n")
        if named is not None:
            ip("-n", self.ns, "link", "set", src, "netns", sandbox)
            ip("-n", sandbox, "-batch", "-", batch=f"link set {src} name eth0\n"
               "addr add 10.9.0.10/24 dev eth0\nlink set eth0 up\n")
        # Now and then dockerd's Leave is lost (it ignores Leave's errors), so
        # DeleteEndpoint finds the endpoint joined.
        # What dockerd asks to undo is no longer owed from the moment it asks
        # (hostnic may finish it and lose only the answer): Leave (after
        # which a restart may release the claim once the NIC is home), then
        # DeleteEndpoint and DeleteNetwork.
        if n % 3 != 2:
            self.acked_endpoints.discard(endpoint)
            self.ignored("Leave", ref)
        if named is not None:
            ip("-n", sandbox, "-batch", "-", batch=f"link set eth0 down\n"
               f"link set eth0 name {src}\nlink set {src} netns {self.ns}\n")
        self.acked_endpoints.discard(endpoint)
        if self.ignored("DeleteEndpoint", ref):
            self.check_home(mac)
        else:
            self.owed[mac] = endpoint  # given back in the background: see free_nic
        self.acked_networks.discard(network)
        if not self.ignored("DeleteNetwork", {"NetworkID": network}):  # dockerd forgot the network; hostnic may not have
            self.remove_orphans(network=network)
        ip("netns", "del", sandbox)
        self.sandboxes.remove(sandbox)
        self.figures["lifecycles"] += 1

    # -- the run -------------------------------------------------------------

    def run(self, kills: int, lifecycles: int = 0, compactions: int = 0) -> dict[str, int]:
        """Until ``kills`` restarts (about 60% at crash points, the rest
        SIGKILLs and SIGTERMs in turn at random instants, at least one
        SIGTERM), ``lifecycles`` lifecycles and ``compactions`` compactions
        have all happened."""
        self.at_points = max(len(POINTS), round(kills * 0.6))
        # A lifecycle makes about six records: a compaction every ~170.
        expected = max(lifecycles, compactions * 170, 1)
        # Twice the share: a stop timed past its lifecycle's end is not made.
        random_share = min(0.3, 2 * max(kills - self.at_points, 1) / expected)
        stops = 0
        self.start()
        self.wait_ready()
        first = self.generation()
        n = 0
        limit = max(kills * 20, lifecycles * 2, 1000)
        while (self.figures["kills"] + self.figures["sigterms"] < kills
               or self.figures["lifecycles"] < lifecycles
               or self.generation() - first < compactions
               or self.killed_at != set(POINTS)
               or not self.figures["sigterms"]) and n < limit:
            timer = None
            overdue = n >= expected and not self.figures["sigterms"]
            if overdue or self.rng.random() < random_share:
                armed = self.proc
                how = "sigterm" if overdue or stops % 2 else "sigkill"
                stops += 1

                def stop_now() -> None:
                    with self.stops:  # the process armed for, never its successor
                        if self.proc is armed and armed.poll() is None and not self.stopping:
                            self.stopping = how
                            armed.send_signal(
                                signal.SIGTERM if how == "sigterm" else signal.SIGKILL)
                timer = threading.Timer(self.rng.uniform(0, 0.08), stop_now)
                timer.start()
            self.lifecycle(n)
            if timer is not None:
                timer.cancel()
                timer.join()
            if self.stopping:
                self.wait_or_reap()  # stopped after the lifecycle's last call
            n += 1
        self.stop(signal.SIGKILL)  # one more restart, not counted, then the last checks
        self.start(armed=False)
        self.wait_ready()
        self.audit()
        for mac in list(self.owed):  # deletes whose answers were lost: given back by now
            self.check_home(mac, wait=150)
        after = self.home_state()
        for mac, state in self.before.items():
            if mac not in after:
                self.figures["lost_nics"] += 1
            elif mac not in self.owed and after[mac] != state:
                self.figures["nics_not_restored"] += 1
                self.log.write(f"NIC {mac}: {after[mac]} != {state}\n")
        self.figures["leftover_claims"] = len(self.rpc("endpoints.list"))
        self.figures["leftover_networks"] = len(self.rpc("networks.list"))
        self.figures["compactions"] = self.generation() - first
        return self.figures

    def close(self) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        for netns in [*self.sandboxes, self.ns, self.peers]:
            subprocess.run(["ip", "netns", "del", netns], check=False, capture_output=True)
        shutil.rmtree(self.work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=300, help="restarts (kills and stops)")
    parser.add_argument("--lifecycles", type=int, default=2000)
    parser.add_argument("--compactions", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("the soak needs root (namespaces and veths)")
    soak = Soak(seed=args.seed)
    started = time.monotonic()
    try:
        figures = soak.run(args.kills, args.lifecycles, args.compactions)
        tracebacks = soak.plugin_log().count("Traceback")
    finally:
        soak.close()
    print(json.dumps({**figures, "tracebacks_logged": tracebacks,
                      "seconds": round(time.monotonic() - started, 1),
                      "crash_points_hit": sorted(soak.killed_at)}, indent=1))
    short = [f"{what} {done} < {asked}" for what, done, asked in (
        ("restarts", figures["kills"] + figures["sigterms"], args.kills),
        ("lifecycles", figures["lifecycles"], args.lifecycles),
        ("compactions", figures["compactions"], args.compactions)) if done < asked]
    bad = [k for k in BAD if figures.get(k)]
    if bad or short or tracebacks or soak.killed_at != set(POINTS):
        raise SystemExit(f"soak failed: {', '.join(bad + short) or 'tracebacks or crash points'}")


if __name__ == "__main__":
    main()
