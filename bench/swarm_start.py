"""A swarm service's task start time through hostnic against a service with
no network (a task with only ``lo``, the swarm's ``--network none``), on the
same single-node swarm, as a ratio. Used by the end-to-end suite."""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable

IMAGE = "hostnic-test:busybox"


def running_tasks(docker: Callable[..., Any], service: str) -> list[str]:
    """Ids of the service's running containers on this node."""
    listed: str = docker("ps", "-q", "-f", f"label=com.docker.swarm.service.name={service}",
                         "-f", "status=running", check=False).stdout
    return listed.split()


def wait(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


def task_start(docker: Callable[..., Any], name: str, *network: str,
               image: str = IMAGE) -> float:
    """Seconds from ``service create`` to its task running; then removes it
    and waits for its container to be gone (and so its NIC given back)."""
    started = time.monotonic()
    # --no-resolve-image: no registry to ask for a digest (the CLI would
    # wait for DNS to time out when the node has a route out).
    docker("service", "create", "-d", "--no-resolve-image", "--name", name,
           "--mode", "global", "--endpoint-mode", "dnsrr", "--stop-grace-period", "1s", *network,
           image, "sleep", "3600")
    wait(lambda: running_tasks(docker, name), 60, f"service {name}'s task")
    elapsed = time.monotonic() - started
    docker("service", "rm", name)
    wait(lambda: not docker("ps", "-aq", "-f", f"label=com.docker.swarm.service.name={name}",
                            check=False).stdout.split(), 60, f"service {name} to go")
    return elapsed


def measure(docker: Callable[..., Any], network: str, runs: int = 3) -> dict[str, float]:
    """Medians, interleaved so that drift hits both alike, and the ratio."""
    samples: dict[str, list[float]] = {"none": [], "hostnic": []}
    for i in range(runs):
        samples["none"].append(task_start(docker, f"bench-none-{i}"))
        samples["hostnic"].append(task_start(docker, f"bench-hostnic-{i}", "--network", network))
    figures = {name: statistics.median(s) for name, s in samples.items()}
    figures["ratio"] = figures["hostnic"] / figures["none"]
    return figures
