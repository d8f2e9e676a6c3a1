"""Driver call latency against a running hostnic, with many links on the host.

For each link count (default 20 and 2,000) the script makes a namespace of its
own holding exactly that many links (lo and one end of each veth pair; the
peers sit in a second namespace), starts the installed ``twistd hostnic``
there, creates a network whose pool is up to 32 of those veths, and runs
endpoint lifecycles (CreateEndpoint, Join, Leave, DeleteEndpoint) over a fresh
unix-socket connection per request, as dockerd does: at concurrency 1, and at
32 where the pool has 32 NICs (each worker pins its own). It prints p50/p99 per method,
lifecycles per second and the error count, and the Join p50 ratio between the
largest and smallest link counts. Root only; everything it makes is removed.

    python bench/driver_bench.py [--links 20 2000] [--seconds 10]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

from hostnic.ctl import UnixHTTPConnection

TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")
POOL = 32
METHODS = ("CreateEndpoint", "Join", "Leave", "DeleteEndpoint")


def call(sock: str, method: str, body: Any) -> tuple[float, dict[str, Any]]:
    started = time.perf_counter()
    connection = UnixHTTPConnection(sock)
    try:
        connection.request("POST", f"/NetworkDriver.{method}", body=json.dumps(body))
        answer = json.loads(connection.getresponse().read())
    finally:
        connection.close()
    return time.perf_counter() - started, answer


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


class Host:
    """A namespace with ``links`` links and hostnic serving inside it."""

    def __init__(self, links: int) -> None:
        self.netns = f"hnbench{os.getpid()}x{links}"
        self.peers = self.netns + "p"
        self.work = tempfile.mkdtemp(prefix="hostnic-bench-")
        self.sock = os.path.join(self.work, "hostnic.sock")
        for netns in (self.netns, self.peers):
            subprocess.run(["ip", "netns", "add", netns], check=True)
        pairs = links - 1  # with lo, exactly ``links`` links
        batch = "".join(f"link add b{i} type veth peer name c{i} netns {self.peers}\n"
                        for i in range(pairs))
        subprocess.run(["ip", "-n", self.netns, "-batch", "-"], input=batch.encode(), check=True)
        self.links = links
        shown = json.loads(subprocess.run(["ip", "-n", self.netns, "-j", "link", "show"],
                                          capture_output=True, check=True).stdout)
        by_name = {l["ifname"]: l["address"] for l in shown}
        self.macs = [by_name[f"b{i}"] for i in range(min(POOL, pairs))]
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", self.netns, TWISTD, "-n", "--pidfile=", "hostnic",
             "--socket", f"unix:{self.sock}", "--state-dir", os.path.join(self.work, "state"),
             "--admin", f"unix:{os.path.join(self.work, 'admin.sock')}"],
            stdout=open(os.path.join(self.work, "log"), "wb"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while True:
            try:
                call(self.sock, "GetCapabilities", {})
                break
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise SystemExit("hostnic did not start")
                time.sleep(0.1)

    def close(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        for netns in (self.netns, self.peers):
            subprocess.run(["ip", "netns", "del", netns], check=False)
        shutil.rmtree(self.work, ignore_errors=True)


def lifecycles(host: Host, network: str, concurrency: int, seconds: float
               ) -> tuple[dict[str, list[float]], int, int]:
    samples: dict[str, list[float]] = {m: [] for m in METHODS}
    errors, done = [0], [0]
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def worker(n: int) -> None:
        i = 0
        while time.monotonic() < stop_at:
            endpoint = f"{n:08x}{i:056x}"
            i += 1
            ref = {"NetworkID": network, "EndpointID": endpoint}
            bodies = {"CreateEndpoint": {**ref, "Interface": {"Address": "10.0.0.2/24"},
                                         "Options": {"hostnic_mac": host.macs[n]}},
                      "Join": {**ref, "SandboxKey": "/bench"}, "Leave": ref,
                      "DeleteEndpoint": ref}
            for method in METHODS:
                try:
                    elapsed, answer = call(host.sock, method, bodies[method])
                except (OSError, http.client.HTTPException, ValueError):
                    answer, elapsed = {"Err": "transport"}, 0.0
                with lock:
                    if "Err" in answer:
                        errors[0] += 1
                    else:
                        samples[method].append(elapsed)
            with lock:
                done[0] += 1

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(concurrency)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rate = done[0] / (time.monotonic() - started)
    return samples, errors[0], round(rate, 1)  # type: ignore[return-value]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--links", type=int, nargs="+", default=[20, 2000])
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("the bench needs root (namespaces and veths)")
    join_p50: dict[int, float] = {}
    for links in args.links:
        host = Host(links)
        try:
            network = f"{links:064x}"
            _, answer = call(host.sock, "CreateNetwork", {
                "NetworkID": network,
                "Options": {"com.docker.network.generic": {"hostnic_mac": ",".join(host.macs)}},
                "IPv4Data": [{"Pool": "10.0.0.0/24", "Gateway": "10.0.0.1/24"}]})
            assert answer == {}, answer
            print(f"== {host.links} links in the namespace")
            for concurrency in sorted({1, min(POOL, len(host.macs))}):
                samples, errors, rate = lifecycles(host, network, concurrency, args.seconds)
                print(f"  concurrency {concurrency:>2}: {rate} lifecycles/s, {errors} errors")
                for method in METHODS:
                    s = samples[method]
                    if s:
                        print(f"    {method:<15} p50 {percentile(s, .5) * 1000:7.2f} ms"
                              f"  p99 {percentile(s, .99) * 1000:7.2f} ms  (n={len(s)})")
                if concurrency == 1 and samples["Join"]:
                    join_p50[host.links] = percentile(samples["Join"], .5)
        finally:
            host.close()
    if len(join_p50) >= 2:
        low, high = min(join_p50), max(join_p50)
        print(f"Join p50 ratio {high} links / {low} links: "
              f"{join_p50[high] / join_p50[low]:.2f}")


if __name__ == "__main__":
    main()
