"""Where each millisecond of a lifecycle goes: the installed daemon under
cProfile in every thread (bench/cprofiled.py), one client keeping its
connection alive, N lifecycles at concurrency 1; then each function's own
time, summed by part and divided by N. cProfile slows Python code (not the
kernel's work behind a system call), so the same run without it is timed
first, for scale.

    python -m bench.where_time_goes [--lifecycles 400] [--links 21]
"""

from __future__ import annotations

import argparse
import os
import pstats
import sys
import time

from bench.host import ERRORS, TWISTD, BenchHost, KeptAlive, lifecycle

HERE = os.path.dirname(os.path.abspath(__file__))

# (part, test on "file:function") in order: the first that matches takes it.
PARTS: list[tuple[str, str]] = [
    ("waiting: epoll and thread queues (idle)", "method 'poll' of|method 'acquire' of|method 'wait' of"),
    ("durable writes: fdatasync", "posix.fdatasync|posix.fsync"),
    ("netlink: the kernel's work behind send and recv", "NETLINK"),
    ("HTTP: the client's socket", "method 'send' of|method 'recv' of|sendmsg|recvmsg"),
    ("/proc and /sys: open, read, write", "posix.open|posix.read|posix.close|posix.listdir"
                                          "|posix.write|posix.scandir"),
    ("netlink: hostnic's parser and batches", "hostnic/kernel/"),
    ("netlink: pyroute2 message encoding", "pyroute2/"),
    ("state: encoding and the journal", "hostnic/state/|attr/_funcs|json/encoder"),
    ("HTTP: twisted.web, Klein, werkzeug", "twisted/web/|klein/|werkzeug/|email/|http/"),
    ("logging: twisted.logger and journald", "twisted/logger/|hostnic/daemon/journald"),
    ("core and driver API", "hostnic/core/|hostnic/api/"),
    ("reactor, Deferreds, threads", "twisted/|threading.py|queue.py"),
]


def part_of(where: str, callers: dict) -> str:
    text = where
    if "method 'send' of" in where or "method 'recv' of" in where:
        if any("hostnic/kernel/rtnl" in caller[0] for caller in callers):
            text = "NETLINK"
    for part, test in PARTS:
        if any(t in text for t in test.split("|")):
            return part
    return "other"


def run(host: BenchHost, count: int) -> float:
    client = KeptAlive(host.sock)
    for n in range(20):  # warm: pyroute2 loaded, caches filled
        lifecycle(client, 0, n, host.macs[0])
    started = time.perf_counter()
    for n in range(count):
        lifecycle(client, 0, 1000 + n, host.macs[0])
    took = time.perf_counter() - started
    client.close()
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lifecycles", type=int, default=400)
    parser.add_argument("--links", type=int, default=21)
    parser.add_argument("--top", type=int, default=0,
                        help="also list each part's N costliest functions")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("the bench needs root (namespaces and veths)")
    out = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"hostnic-profile-{os.getpid()}")
    host = BenchHost(args.links, pool=1)
    try:
        host.start()
        plain = run(host, args.lifecycles)
        host.stop()
        python = os.path.join(os.path.dirname(TWISTD), "python3")
        host.launcher = [python, os.path.join(HERE, "cprofiled.py")]
        os.environ["HOSTNIC_PROFILE_OUT"] = out
        host.start()
        profiled = run(host, args.lifecycles)
        host.stop()
    finally:
        host.close()
    if ERRORS:
        raise SystemExit(f"errors: {ERRORS[:3]}")
    stats = pstats.Stats(out)
    os.unlink(out)
    per: dict[str, float] = {}
    functions: dict[str, list[tuple[float, str]]] = {}
    for (path, line, name), (_cc, _nc, own, _cum, callers) in stats.stats.items():  # type: ignore[attr-defined]
        part = part_of(f"{path}:{name}", callers)
        per[part] = per.get(part, 0.0) + own
        functions.setdefault(part, []).append((own, f"{path.split('site-packages/')[-1]}:{line} {name}"))
    n = args.lifecycles
    print(f"hostnic: {TWISTD}, {args.links} links, {n} lifecycles at C=1")
    print(f"  without the profiler: {plain / n * 1000:.2f} ms per lifecycle "
          f"({n / plain:.1f}/s); under it: {profiled / n * 1000:.2f} ms")
    print("  each thread's own time per lifecycle, under the profiler (ms):")
    busy = sum(v for k, v in per.items() if not k.startswith("waiting"))
    for part, seconds in sorted(per.items(), key=lambda kv: -kv[1]):
        print(f"    {seconds / n * 1000:7.2f}  {part}")
        for own, where in sorted(functions[part], reverse=True)[:args.top]:
            print(f"             {own / n * 1000:6.3f}  {where}")
    print(f"    {busy / n * 1000:7.2f}  all work (every thread, not waiting)")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
