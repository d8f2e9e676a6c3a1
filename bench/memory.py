"""Memory over a long run: hostnic's RSS while it serves N full lifecycles
(default 20,000), sampled every 1,000. Growth is measured from the first
sample (after a warm-up of 1,000 lifecycles: pyroute2 loaded, caches filled)
to the last, and must stay under --limit MiB (default 5): the exit status is
1 otherwise.

    python -m bench.memory [--lifecycles 20000] [--concurrency 4] [--limit 5]
"""

from __future__ import annotations

import argparse
import os
import threading
import time

from bench.host import ERRORS, TWISTD, BenchHost, KeptAlive, lifecycle


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lifecycles", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--limit", type=float, default=5.0)
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("the bench needs root (namespaces and veths)")
    host = BenchHost(101, pool=args.concurrency)
    samples: list[tuple[int, float]] = []
    done = [0]
    lock = threading.Lock()
    try:
        host.start()
        print(f"hostnic: {TWISTD}; RSS at start {host.rss_mib():.1f} MiB")

        def worker(w: int) -> None:
            client = KeptAlive(host.sock)  # as dockerd keeps its connection
            n = 0
            while True:
                with lock:
                    if done[0] >= args.lifecycles:
                        return
                lifecycle(client, w, n, host.macs[w])
                n += 1
                with lock:
                    done[0] += 1
                    if done[0] % 1000 == 0:
                        samples.append((done[0], host.rss_mib()))
                        print(f"  {done[0]:>6} lifecycles: RSS {samples[-1][1]:.1f} MiB",
                              flush=True)

        started = time.monotonic()
        threads = [threading.Thread(target=worker, args=(w,)) for w in range(args.concurrency)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        seconds = time.monotonic() - started
    finally:
        host.close()
    growth = samples[-1][1] - samples[0][1]
    print(f"{done[0]} lifecycles in {seconds:.0f} s ({done[0] / seconds:.0f}/s), "
          f"{len(ERRORS)} errors; RSS after {samples[0][0]}: {samples[0][1]:.1f} MiB, "
          f"after {samples[-1][0]}: {samples[-1][1]:.1f} MiB: growth {growth:+.1f} MiB "
          f"(limit {args.limit:g})")
    if growth >= args.limit or ERRORS:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
