"""Container start time with hostnic against ``--network none`` and against
Docker's built-in macvlan driver, as ratios (absolute timings are noisy here).
Used by the end-to-end suite, and by ``bench/fastpath.py --docker`` against a
private dockerd of its own (the e2e rig)."""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable

IMAGE = "hostnic-test:busybox"


def measure(docker: Callable[..., Any], network: str, runs: int = 10,
            image: str = IMAGE, macvlan: str | None = None) -> dict[str, float]:
    """Median seconds of ``docker run --rm ... true`` per network, interleaved
    so that drift hits them alike, and the ratios to ``none``."""
    def one(net: str) -> float:
        started = time.monotonic()
        docker("run", "--rm", "--network", net, image, "true")
        return time.monotonic() - started

    networks = {"none": "none", "hostnic": network}
    if macvlan is not None:
        networks["macvlan"] = macvlan
    samples: dict[str, list[float]] = {name: [] for name in networks}
    for _ in range(runs):
        for name, net in networks.items():
            samples[name].append(one(net))
    figures = {name: statistics.median(s) for name, s in samples.items()}
    figures["ratio"] = figures["hostnic"] / figures["none"]
    if macvlan is not None:
        figures["macvlan_ratio"] = figures["macvlan"] / figures["none"]
    return figures


def run_with_rig(runs: int = 10) -> dict[str, float]:
    """A private dockerd with hostnic (tests/e2e/rig.py), one hostnic network
    on one NIC and one macvlan network on another, measured in one run."""
    from tests.e2e.rig import Rig
    rig = Rig()
    try:
        rig.start()
        segment = rig.segment("10.61.0.1/24")
        tenant = segment.add_nic("hnbench0")
        parent = segment.add_nic("mvparent0")
        rig.docker("network", "create", "-d", "hostnic", "-o", f"hostnic_mac={tenant.mac}",
                   "--subnet", "10.61.0.0/24", "--gateway", "10.61.0.1", "benchnet")
        rig.docker("network", "create", "-d", "macvlan", "-o", f"parent={parent.name}",
                   "--subnet", "10.62.0.0/24", "--gateway", "10.62.0.1", "benchmv")
        return measure(rig.docker, "benchnet", runs=runs, macvlan="benchmv")
    finally:
        rig.close()
