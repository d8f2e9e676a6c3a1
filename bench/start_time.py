"""Container start time with hostnic against ``--network none`` (a ratio, since
absolute timings are noisy here). Used by the end-to-end suite; callable
against any dockerd through a ``docker(*args)`` function."""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable

IMAGE = "hostnic-test:busybox"


def measure(docker: Callable[..., Any], network: str, runs: int = 10,
            image: str = IMAGE) -> dict[str, float]:
    def one(net: str) -> float:
        started = time.monotonic()
        docker("run", "--rm", "--network", net, image, "true")
        return time.monotonic() - started

    samples: dict[str, list[float]] = {"none": [], "hostnic": []}
    for _ in range(runs):  # interleaved, so drift hits both alike
        samples["none"].append(one("none"))
        samples["hostnic"].append(one(network))
    none, hostnic = (statistics.median(samples[k]) for k in ("none", "hostnic"))
    return {"none": none, "hostnic": hostnic, "ratio": hostnic / none}
