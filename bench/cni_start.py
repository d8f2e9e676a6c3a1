"""Container start through hostnic's CNI plugin against CNI's host-device on
the same NIC, and against no network, under podman (one run, ratios), and
what each gives back of the NIC.

    python -m bench.cni_start [--runs 10]

A private podman and hostnic (tests/e2e/cni_rig.py), one NIC with a life of
its own on the host (an address, a route, MTU 1450, a sysctl). Each round
runs ``podman run --rm`` once per network, interleaved so drift hits them
alike; between rounds the NIC is put back as it was (host-device leaves it
otherwise), so each plugin starts from the same NIC.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any

from tests.e2e.cni_rig import IMAGE_REF, CNIRig
from tests.e2e.rig import run

LIMITS = ("--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024")


def state(rig: CNIRig, mac: str) -> dict[str, Any]:
    link = rig.host_link_by_mac(mac)
    if link is None:
        return {"present": False}
    name = str(link["ifname"])
    routes = run("ip", "-n", rig.netns, "route", "show", "dev", name, "proto", "static").stdout
    arp = run("ip", "netns", "exec", rig.netns, "sysctl", "-n",
              f"net.ipv4.conf.{name}.arp_ignore").stdout.strip()
    return {"present": True, "name": name, "mtu": link["mtu"],
            "up": "UP" in link["flags"],  # type: ignore[operator]
            "addresses": sorted(f"{a['local']}/{a['prefixlen']}"
                                for a in link["addr_info"]  # type: ignore[attr-defined]
                                if a.get("scope") == "global"),
            "routes": sorted(routes.split("\n")[:-1]), "arp_ignore": arp}


def configure(rig: CNIRig, name: str, mac: str) -> None:
    """The NIC as the host had it (whatever it is called now)."""
    link = rig.host_link_by_mac(mac)
    assert link is not None
    now = str(link["ifname"])
    for cmd in (("link", "set", now, "down"), ("link", "set", now, "name", name),
                ("link", "set", name, "mtu", "1450"), ("addr", "flush", "dev", name),
                ("addr", "add", "192.168.30.4/24", "dev", name), ("link", "set", name, "up"),
                ("route", "replace", "172.30.0.0/16", "via", "192.168.30.1", "dev", name,
                 "proto", "static")):
        run("ip", "-n", rig.netns, *cmd)
    run("ip", "netns", "exec", rig.netns, "sysctl", "-qw", f"net.ipv4.conf.{name}.arp_ignore=2")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("the bench needs root (namespaces, veths, podman)")
    rig = CNIRig()
    try:
        rig.start()
        rig.podman_image()
        segment = rig.segment("10.30.0.1/24")
        nic = segment.add_nic("ens30")
        configure(rig, "ens30", nic.mac)
        before = state(rig, nic.mac)
        ipam = {"type": "static", "addresses": [{"address": "10.30.0.5/24",
                                                 "gateway": "10.30.0.1"}],
                "routes": [{"dst": "0.0.0.0/0"}]}
        plugins = {"hostnic": {"type": "hostnic", "mac": nic.mac, "ipam": ipam},
                   "host-device": {"type": "host-device", "device": "ens30", "ipam": ipam}}
        samples: dict[str, list[float]] = {"none": [], **{k: [] for k in plugins}}
        given_back: dict[str, dict[str, Any]] = {}
        for _ in range(args.runs):
            for name in samples:
                if name != "none":
                    rig.network(name, plugins[name])
                started = time.monotonic()
                rig.podman("run", "--rm", "--network", name, *LIMITS, IMAGE_REF, "true",
                           timeout=180)
                samples[name].append(time.monotonic() - started)
                if name != "none":
                    given_back[name] = state(rig, nic.mac)
                    configure(rig, "ens30", nic.mac)
        medians = {name: statistics.median(s) for name, s in samples.items()}
        print(f"podman run --rm, median of {args.runs} (same run, same NIC):")
        for name, seconds in medians.items():
            print(f"  {name:<12} {seconds:.3f} s  (x{seconds / medians['none']:.2f} --network "
                  f"none)")
        print(f"  hostnic / host-device: x{medians['hostnic'] / medians['host-device']:.2f}")
        print("\nwhat the NIC is after the container goes (before: "
              f"{before['name']}, MTU {before['mtu']}, "
              f"{'up' if before['up'] else 'down'}, {before['addresses']}, "
              f"{len(before['routes'])} route, arp_ignore {before['arp_ignore']}):")
        print("| | name | MTU | admin state | addresses | routes | arp_ignore |")
        print("|---|---|---|---|---|---|---|")
        for name, after in given_back.items():
            cells = [("as was" if after[key] == before[key] else str(after[key]))
                     for key in ("name", "mtu", "up", "addresses", "routes", "arp_ignore")]
            print(f"| {name} | " + " | ".join(cells) + " |")
    finally:
        rig.close()


if __name__ == "__main__":
    main()
