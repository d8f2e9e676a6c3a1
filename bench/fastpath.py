"""The request path's figures, in one run (absolute timings are noisy here:
compare the figures of one run, and the ratios).

For each link count (default 21 and 2,001): Join p50/p99, full lifecycles per
second (CreateNetwork, CreateEndpoint, Join, Leave, DeleteEndpoint,
DeleteNetwork, each on a fresh connection as dockerd makes them) at
concurrency 1 and 32 with the error count, the admin API's ``status`` p99
idle, under the concurrency-32 load, and under that load while 2,000 other
links flap, hostnic's RSS idle and at its peak under load, and the cold start
to the first answered request.

    python -m bench.fastpath [--links 21 2001] [--seconds 10] [--docker]
Memory over a long run: bench/memory.py. Container start: bench/start_time.py.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import threading
import time

from bench.host import ERRORS, METHODS, TWISTD, BenchHost, lifecycle, percentile

CONCURRENCY = 32


def run_lifecycles(host: BenchHost, concurrency: int, seconds: float,
                   peak: list[float]) -> tuple[dict[str, list[float]], int, float]:
    samples: dict[str, list[float]] = {m: [] for m in METHODS}
    errors, done = [0], [0]
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def worker(w: int) -> None:
        n = 0
        while time.monotonic() < stop_at:
            times, failed = lifecycle(host, w, n, host.macs[w])
            n += 1
            with lock:
                errors[0] += failed
                done[0] += 1
                for method, took in times.items():
                    samples[method].append(took)

    def watch_memory() -> None:
        while time.monotonic() < stop_at:
            peak.append(host.rss_mib())
            time.sleep(0.05)

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(concurrency)]
    threads.append(threading.Thread(target=watch_memory))
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return samples, errors[0], done[0] / (time.monotonic() - started)


def status_p99(host: BenchHost, seconds: float) -> float:
    samples = []
    stop_at = time.monotonic() + seconds
    while time.monotonic() < stop_at:
        took, answer = host.rpc("status")
        assert "result" in answer, answer
        samples.append(took)
        time.sleep(0.005)
    return percentile(samples, 0.99)


def flap(host: BenchHost, stop: threading.Event) -> None:
    """2,000 other links going up and down, as fast as ip can make them."""
    subprocess.run(["ip", "netns", "exec", host.peers, "sh", "-c",
                    "for i in $(seq 0 1999); do ip link add f$i type veth peer name g$i; done"],
                   check=True, capture_output=True)
    subprocess.run(["ip", "netns", "exec", host.peers, "sh", "-c",
                    "for i in $(seq 0 1999); do ip link set g$i netns " + host.netns + "; done"],
                   check=True, capture_output=True)
    up = "".join(f"link set g{i} up\n" for i in range(2000))
    down = up.replace(" up\n", " down\n")
    while not stop.is_set():
        for batch in (up, down):
            subprocess.run(["ip", "-n", host.netns, "-batch", "-"], input=batch.encode(),
                           capture_output=True)


def cold_start(host: BenchHost, runs: int = 5) -> float:
    times = []
    for _ in range(runs):
        host.stop()
        times.append(host.start())
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--links", type=int, nargs="+", default=[21, 2001])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--docker", action="store_true",
                        help="also time container starts through a private dockerd")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("the bench needs root (namespaces and veths)")
    join_p50: dict[int, float] = {}
    print(f"hostnic: {TWISTD}")
    for links in args.links:
        host = BenchHost(links, pool=CONCURRENCY)
        try:
            host.start()
            print(f"== {host.links} links in the namespace")
            print(f"  cold start to the first answer: {cold_start(host) * 1000:.0f} ms "
                  f"(median of 5)")
            time.sleep(1)
            idle_rss = host.rss_mib()
            idle_status = status_p99(host, 2)
            for concurrency in sorted({1, min(CONCURRENCY, len(host.macs))}):
                peak: list[float] = []
                samples, errors, rate = run_lifecycles(host, concurrency, args.seconds, peak)
                print(f"  concurrency {concurrency:>2}: {rate:.1f} full lifecycles/s, "
                      f"{errors} errors, RSS peak {max(peak):.1f} MiB")
                for error in sorted(set(ERRORS))[:5]:
                    print(f"    error: {error[:200]}")
                ERRORS.clear()
                for method in METHODS:
                    s = samples[method]
                    print(f"    {method:<15} p50 {percentile(s, .5) * 1000:7.2f} ms"
                          f"  p99 {percentile(s, .99) * 1000:7.2f} ms  (n={len(s)})")
                if concurrency == 1:
                    join_p50[links] = percentile(samples["Join"], .5)
            loaded: list[float] = []
            results: dict[str, float] = {}
            concurrency = min(CONCURRENCY, len(host.macs))

            def status_under_load() -> float:
                """The admin status p99 while lifecycles run at ``concurrency``."""
                load = threading.Thread(target=lambda: run_lifecycles(
                    host, concurrency, args.seconds, loaded))
                load.start()
                time.sleep(1)
                p99 = status_p99(host, args.seconds - 2)
                load.join()
                return p99

            results["load"] = status_under_load()
            stop = threading.Event()
            churn = threading.Thread(target=flap, args=(host, stop))
            churn.start()
            time.sleep(3)  # the 2,000 links exist and flap
            results["churn"] = status_under_load()
            stop.set()
            churn.join()
            print(f"  admin status p99: idle {idle_status * 1000:.1f} ms, under C={concurrency} "
                  f"{results['load'] * 1000:.1f} ms, under C={concurrency} + 2,000 links "
                  f"flapping {results['churn'] * 1000:.1f} ms")
            print(f"  RSS: idle {idle_rss:.1f} MiB, peak under load {max(loaded):.1f} MiB")
        finally:
            host.close()
    if len(join_p50) >= 2:
        low, high = min(join_p50), max(join_p50)
        print(f"Join p50 {high} links / {low} links: {join_p50[high] * 1000:.2f} / "
              f"{join_p50[low] * 1000:.2f} ms = {join_p50[high] / join_p50[low]:.2f}")
    if args.docker:
        from bench.start_time import run_with_rig
        figures = run_with_rig()
        print(f"container start, median of 10 (private dockerd): --network none "
              f"{figures['none']:.3f} s, hostnic {figures['hostnic']:.3f} s (x{figures['ratio']:.2f}), "
              f"macvlan {figures['macvlan']:.3f} s (x{figures['macvlan_ratio']:.2f})")


if __name__ == "__main__":
    main()
