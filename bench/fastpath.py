"""The request path's figures against the issue's targets, in one run, with
the references beside them (absolute timings are noisy here: compare the
figures of one run, and their ratios).

Clients keep their connections alive, as dockerd's plugin client does. For
each link count (default 21 and 2,001), in one namespace holding exactly that
many links: full lifecycles per second (CreateNetwork, CreateEndpoint, Join,
Leave, DeleteEndpoint, DeleteNetwork on one NIC) at concurrency 1 for hostnic,
the seed prototype under gunicorn (one gthread worker, four threads) and a
minimal Klein app (bench/minimal_klein.py); Join p50 of each; hostnic at
concurrency 32 with its error count; the admin API's ``status`` p99 idle,
under that load, and under it while 2,000 other links flap; RSS idle and at
the peak; cold start to the first answer against the prototype's.

    python -m bench.fastpath [--links 21 2001] [--seconds 10] [--docker]
Memory over 20,000 lifecycles: bench/memory.py. Container start: --docker
(bench/start_time.py against a private dockerd).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import threading
import time
from typing import Callable

from bench.host import (ERRORS, METHODS, TWISTD, BenchHost, KeptAlive, lifecycle,
                        percentile)
from bench.references import Reference

CONCURRENCY = 32
REFERENCES = ("prototype", "klein")


def run_lifecycles(sock: str, macs: list[str], concurrency: int, seconds: float,
                   rss: Callable[[], float], peak: list[float]
                   ) -> tuple[dict[str, list[float]], int, float]:
    """Lifecycles for ``seconds``: (seconds per method, errors, lifecycles/s)."""
    samples: dict[str, list[float]] = {m: [] for m in METHODS}
    errors, done = [0], [0]
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def worker(w: int) -> None:
        client = KeptAlive(sock)
        n = 0
        try:
            while time.monotonic() < stop_at:
                times, failed = lifecycle(client, w, n, macs[w])
                n += 1
                with lock:
                    errors[0] += failed
                    done[0] += 1
                    for method, took in times.items():
                        samples[method].append(took)
        finally:
            client.close()

    def watch_memory() -> None:
        while time.monotonic() < stop_at:
            peak.append(rss())
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
    client = KeptAlive(host.admin)
    samples = []
    stop_at = time.monotonic() + seconds
    try:
        while time.monotonic() < stop_at:
            took, answer = client.post("/rpc", {"jsonrpc": "2.0", "id": 1, "method": "status"})
            assert "result" in answer, answer
            samples.append(took)
            time.sleep(0.005)
    finally:
        client.close()
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


def cold_start(start: Callable[[], float], stop: Callable[[], None], runs: int = 5) -> float:
    times = []
    for _ in range(runs):
        stop()
        times.append(start())
    return statistics.median(times)


def show_errors() -> None:
    for error in sorted(set(ERRORS))[:5]:
        print(f"    error: {error[:200]}")
    ERRORS.clear()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--links", type=int, nargs="+", default=[21, 2001])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--docker", action="store_true",
                        help="also time container starts through a private dockerd")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("the bench needs root (namespaces and veths)")
    print(f"hostnic: {TWISTD}")
    fig: dict[str, float] = {}
    for links in args.links:
        host = BenchHost(links, pool=CONCURRENCY)
        try:
            print(f"== {host.links} links in the namespace", flush=True)
            for kind in REFERENCES:
                ref = Reference(host, kind)
                try:
                    started = ref.start()
                    if kind == "prototype":
                        fig[f"cold {kind}"] = cold_start(ref.start, ref.stop)
                    time.sleep(1)
                    fig[f"rss {kind}"] = ref.rss_mib()
                    samples, errors, rate = run_lifecycles(ref.sock, host.macs, 1, args.seconds,
                                                           ref.rss_mib, [])
                    fig[f"rate {kind} {links}"] = rate
                    fig[f"join {kind} {links}"] = percentile(samples["Join"], .5)
                    print(f"  {kind}: {rate:.1f} lifecycles/s at C=1, {errors} errors, Join p50 "
                          f"{fig[f'join {kind} {links}'] * 1000:.2f} ms, started in "
                          f"{started * 1000:.0f} ms, RSS {fig[f'rss {kind}']:.1f} MiB", flush=True)
                    show_errors()
                finally:
                    ref.stop()
            host.start()
            fig["cold hostnic"] = cold_start(host.start, host.stop)
            time.sleep(1)
            fig["rss hostnic"] = host.rss_mib()
            fig["status idle"] = status_p99(host, 2)
            for concurrency in sorted({1, min(CONCURRENCY, len(host.macs))}):
                peak: list[float] = []
                samples, errors, rate = run_lifecycles(host.sock, host.macs, concurrency,
                                                       args.seconds, host.rss_mib, peak)
                fig[f"rate hostnic {links} C{concurrency}"] = rate
                fig[f"errors hostnic {links} C{concurrency}"] = errors
                fig[f"peak hostnic {links} C{concurrency}"] = max(peak)
                print(f"  hostnic, concurrency {concurrency:>2}: {rate:.1f} lifecycles/s, "
                      f"{errors} errors, RSS peak {max(peak):.1f} MiB")
                show_errors()
                for method in METHODS:
                    s = samples[method]
                    print(f"    {method:<15} p50 {percentile(s, .5) * 1000:7.2f} ms"
                          f"  p99 {percentile(s, .99) * 1000:7.2f} ms  (n={len(s)})")
                if concurrency == 1:
                    fig[f"join hostnic {links}"] = percentile(samples["Join"], .5)
            concurrency = min(CONCURRENCY, len(host.macs))
            fig[f"concurrency {links}"] = concurrency
            loaded: list[float] = []

            def status_under_load() -> float:
                """The admin status p99 while lifecycles run at ``concurrency``."""
                load = threading.Thread(target=lambda: run_lifecycles(
                    host.sock, host.macs, concurrency, args.seconds, host.rss_mib, loaded))
                load.start()
                time.sleep(1)
                p99 = status_p99(host, max(1.0, args.seconds - 2))
                load.join()
                return p99

            fig[f"status load {links}"] = status_under_load()
            stop = threading.Event()
            churn = threading.Thread(target=flap, args=(host, stop))
            churn.start()
            time.sleep(3)  # the 2,000 links exist and flap
            fig[f"status churn {links}"] = status_under_load()
            stop.set()
            churn.join()
            fig[f"peak hostnic {links}"] = max(loaded)
            print(f"  admin status p99: idle {fig['status idle'] * 1000:.1f} ms, under "
                  f"C={concurrency} {fig[f'status load {links}'] * 1000:.1f} ms, under "
                  f"C={concurrency} + 2,000 links flapping "
                  f"{fig[f'status churn {links}'] * 1000:.1f} ms", flush=True)
            show_errors()
        finally:
            host.close()
    if args.docker:
        from bench.start_time import run_with_rig
        docker = run_with_rig()
        print(f"container start, median of 10 (private dockerd): --network none "
              f"{docker['none']:.3f} s, hostnic {docker['hostnic']:.3f} s "
              f"(x{docker['ratio']:.2f}), macvlan {docker['macvlan']:.3f} s "
              f"(x{docker['macvlan_ratio']:.2f})")
    table(fig, min(args.links), max(args.links))


def table(fig: dict[str, float], low: int, high: int) -> None:
    """The issue's targets, each with hostnic's figure and its reference's."""
    def ms(key: str) -> str:
        return f"{fig[key] * 1000:.2f} ms"

    c = int(fig[f"concurrency {high}"])  # (fewer NICs than 32 at few links)

    rows = [
        ("lifecycles/s at C=1, %d links" % low,
         f"{fig[f'rate hostnic {low} C1']:.1f}",
         f"prototype {fig[f'rate prototype {low}']:.1f}, Klein {fig[f'rate klein {low}']:.1f}",
         f"x{fig[f'rate hostnic {low} C1'] / fig[f'rate prototype {low}']:.2f} the prototype",
         ">= x2"),
        (f"lifecycles/s at C={c}, errors ({high} links)",
         f"{fig[f'rate hostnic {high} C{c}']:.1f}, {fig[f'errors hostnic {high} C{c}']:.0f}",
         f"hostnic at C=1 {fig[f'rate hostnic {high} C1']:.1f}",
         f"x{fig[f'rate hostnic {high} C{c}'] / fig[f'rate hostnic {high} C1']:.2f}",
         ">= x1, 0 errors"),
        (f"Join p50 at {high} links", ms(f"join hostnic {high}"),
         f"Klein {ms(f'join klein {high}')}, prototype {ms(f'join prototype {high}')}",
         f"x{fig[f'join hostnic {high}'] / fig[f'join klein {high}']:.1f} Klein", "<= x5"),
        (f"Join p50 {high} / {low} links",
         f"{ms(f'join hostnic {high}')} / {ms(f'join hostnic {low}')}", "",
         f"x{fig[f'join hostnic {high}'] / fig[f'join hostnic {low}']:.2f}", "<= x1.5"),
        (f"admin status p99, C={c} + 2,000 flapping", ms(f"status churn {high}"),
         f"idle {ms('status idle')}, C={c} alone {ms(f'status load {high}')}", "", "<= 20 ms"),
        ("cold start to the first answer", f"{fig['cold hostnic'] * 1000:.0f} ms",
         f"prototype {fig['cold prototype'] * 1000:.0f} ms",
         f"x{fig['cold hostnic'] / fig['cold prototype']:.2f}", "<= x0.8"),
        (f"RSS idle / peak at C={c}",
         f"{fig['rss hostnic']:.1f} / {fig[f'peak hostnic {high}']:.1f} MiB",
         f"prototype idle {fig['rss prototype']:.1f} MiB", "", "<= 40 / 50 MiB"),
    ]
    print()
    print("| figure | hostnic | references, same run | ratio | target |")
    print("|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
