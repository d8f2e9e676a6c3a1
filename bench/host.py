"""A bench host: a network namespace of its own holding exactly N links (lo and
one end of each veth pair; the peers sit in a second namespace), with the
installed ``twistd hostnic`` serving inside it. Root only; ``close()``
removes everything it made."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable

from hostnic.ctl import UnixHTTPConnection

# The daemon as users run it: the runtime alone (scripts/install makes
# /opt/hostnic), not the test venv with its extra packages; else this venv's.
RUNTIME_TWISTD = "/opt/hostnic/bin/twistd"
TWISTD = os.environ.get("HOSTNIC_BENCH_TWISTD") or (
    RUNTIME_TWISTD if os.path.exists(RUNTIME_TWISTD)
    else os.path.join(os.path.dirname(sys.executable), "twistd"))
TRANSPORT = (OSError, http.client.HTTPException, ValueError)


def post(sock: str, path: str, body: Any) -> tuple[float, dict[str, Any]]:
    """One request on a fresh connection; (seconds, answer)."""
    client = KeptAlive(sock)
    try:
        return client.post(path, body)
    finally:
        client.close()


class KeptAlive:
    """A client that keeps its connection open between calls, as dockerd's
    plugin client does (Go's http.Transport), and connects again once when
    the server closed it between two calls (as Go's transport retries an
    idempotent-looking request on a connection found dead)."""

    def __init__(self, sock: str) -> None:
        self.sock = sock
        self.connection: UnixHTTPConnection | None = None

    def post(self, path: str, body: Any) -> tuple[float, dict[str, Any]]:
        raw = b"" if body is None else json.dumps(body).encode()
        started = time.perf_counter()
        for attempt in (1, 2):
            fresh = self.connection is None
            if self.connection is None:
                self.connection = UnixHTTPConnection(self.sock)
            try:
                self.connection.request("POST", path, body=raw,
                                        headers={"Content-Type": "application/json"})
                response = self.connection.getresponse()
                answer: dict[str, Any] = json.loads(response.read())
                if response.will_close:
                    self.close()
                return time.perf_counter() - started, answer
            except (OSError, http.client.HTTPException):
                self.close()
                if fresh or attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None


def first_answer(sock: str, proc: "subprocess.Popen[bytes]", started: float,
                 failed: Callable[[], str]) -> float:
    """Seconds from ``started`` to the first answered Plugin.Activate on
    ``sock``; exits with ``failed()`` if the server dies or a minute passes."""
    deadline = time.monotonic() + 60
    while True:
        try:
            post(sock, "/Plugin.Activate", None)
            return time.perf_counter() - started
        except TRANSPORT:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit(failed())
            time.sleep(0.002)


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


class BenchHost:
    def __init__(self, links: int, pool: int = 32) -> None:
        tag = f"{os.getpid()}x{links}"
        self.netns, self.peers = f"hnbench{tag}", f"hnbenchp{tag}"
        self.work = tempfile.mkdtemp(prefix="hostnic-bench-")
        self.sock = os.path.join(self.work, "hostnic.sock")
        self.admin = os.path.join(self.work, "admin.sock")
        self.proc: subprocess.Popen[bytes] | None = None
        self.launcher = [TWISTD]  # bench/where_time_goes.py runs twistd under its profiler
        for netns in (self.netns, self.peers):
            subprocess.run(["ip", "netns", "add", netns], check=True)
        subprocess.run(["ip", "-n", self.netns, "link", "set", "lo", "up"], check=True)
        pairs = links - 1  # with lo, exactly ``links`` links
        batch = "".join(f"link add b{i} type veth peer name c{i} netns {self.peers}\n"
                        for i in range(pairs))
        subprocess.run(["ip", "-n", self.netns, "-batch", "-"], input=batch.encode(), check=True)
        self.links = links
        shown = json.loads(subprocess.run(["ip", "-n", self.netns, "-j", "link", "show"],
                                          capture_output=True, check=True).stdout)
        by_name = {l["ifname"]: l["address"] for l in shown}
        self.macs = [by_name[f"b{i}"] for i in range(min(pool, pairs))]

    def start(self) -> float:
        """Start hostnic; seconds from spawn to the first answered request."""
        started = time.perf_counter()
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", self.netns, *self.launcher, "-n", "--pidfile=",
             *os.environ.get("HOSTNIC_BENCH_TWISTD_ARGS", "").split(), "hostnic",
             "--socket", f"unix:{self.sock}:lockfile=1",
             "--state-dir", os.path.join(self.work, "state"),
             "--admin", f"unix:{self.admin}:lockfile=1",
             "--cni", f"unix:{os.path.join(self.work, 'cni.sock')}:lockfile=1"],
            stdout=open(os.path.join(self.work, "log"), "ab"), stderr=subprocess.STDOUT)
        return first_answer(self.sock, self.proc, started,
                            lambda: "hostnic did not start: " + self.log()[-2000:])

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log(self) -> str:
        with open(os.path.join(self.work, "log"), errors="replace") as f:
            return f.read()

    def rss_mib(self) -> float:
        """Resident memory of the twistd process (``ip netns exec`` execs it)."""
        assert self.proc is not None
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS")

    def call(self, method: str, body: Any) -> tuple[float, dict[str, Any]]:
        return post(self.sock, f"/NetworkDriver.{method}", body)

    def rpc(self, method: str) -> tuple[float, dict[str, Any]]:
        return post(self.admin, "/rpc", {"jsonrpc": "2.0", "id": 1, "method": method})

    def close(self) -> None:
        self.stop()
        for netns in (self.netns, self.peers):
            subprocess.run(["ip", "netns", "del", netns], check=False)
        shutil.rmtree(self.work, ignore_errors=True)


METHODS = ("CreateNetwork", "CreateEndpoint", "Join", "Leave", "DeleteEndpoint",
           "DeleteNetwork")


def lifecycle(client: KeptAlive, worker: int, n: int, mac: str
              ) -> tuple[dict[str, float], int]:
    """One full lifecycle on one NIC, as dockerd drives it; (seconds per method, errors)."""
    # Docker's ids are random: so are these (their first 13 characters differ).
    network = hashlib.sha256(f"net {worker} {n}".encode()).hexdigest()
    endpoint = hashlib.sha256(f"ep {worker} {n}".encode()).hexdigest()
    ref = {"NetworkID": network, "EndpointID": endpoint}
    bodies = {
        "CreateNetwork": {"NetworkID": network,
                          "Options": {"com.docker.network.generic": {"hostnic_mac": mac}},
                          "IPv4Data": [{"Pool": "10.0.0.0/24", "Gateway": "10.0.0.1/24"}]},
        "CreateEndpoint": {**ref, "Interface": {"Address": "10.0.0.2/24"}},
        "Join": {**ref, "SandboxKey": "/bench"}, "Leave": ref, "DeleteEndpoint": ref,
        "DeleteNetwork": {"NetworkID": network}}
    times, errors = {}, 0
    for method in METHODS:
        try:
            times[method], answer = client.post(f"/NetworkDriver.{method}", bodies[method])
        except TRANSPORT as e:
            answer = {"Err": f"transport: {e}"}
        if "Err" in answer:
            errors += 1
            ERRORS.append(f"{method}: {answer['Err']}")
    return times, errors


ERRORS: list[str] = []  # the refusals a run met, to show what they were
