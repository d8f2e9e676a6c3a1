"""Swarm services through hostnic as a managed plugin, as the README's Swarm
section has a user do it: on every node a config-only network naming that
node's NIC, on a manager one swarm-scoped hostnic network from it, then a
global service. One node, then two (two private dockerds joined over a link
between their namespaces). And what a legacy-socket hostnic gets."""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import pytest

from bench.swarm_start import measure, running_tasks
from tests.e2e.rig import Nic, Rig, run, wait_for
from tests.e2e.test_docker import docker_error, exec_in, links_in, ping, snapshot

pytestmark = pytest.mark.e2e


@contextlib.contextmanager
def swarm(rig: Rig, address: str = "127.0.0.1") -> Iterator[str]:
    """A swarm of this one node for the test's length; yields its join token."""
    rig.docker("swarm", "init", "--advertise-addr", address, "--listen-addr", f"{address}:2377")
    try:
        yield rig.docker("swarm", "join-token", "-q", "worker").stdout.strip()
    finally:
        rig.docker("swarm", "leave", "--force", check=False)


def config_network(rig: Rig, name: str, nic: Nic, subnet: str, gateway: str,
                   *ip_range: str) -> None:
    """This node's half of a swarm network: which NIC, which addresses."""
    rig.docker("network", "create", "--config-only", "-o", f"hostnic_mac={nic.mac}",
               "--subnet", subnet, "--gateway", gateway, *ip_range, name)


def global_service(rig: Rig, name: str, network: str) -> None:
    # dnsrr: no virtual IP, so no ingress/load-balancer leg; a short grace
    # period because `sleep` as pid 1 ignores SIGTERM; no registry to ask.
    rig.docker("service", "create", "-d", "--no-resolve-image", "--name", name,
               "--mode", "global", "--endpoint-mode", "dnsrr", "--stop-grace-period", "1s",
               "--network", network, "hostnic-test:busybox", "sleep", "3600")


def the_task(rig: Rig, service: str, other_than: str | None = None) -> str:
    def found() -> str | None:
        tasks = [t for t in running_tasks(rig.docker, service) if t != other_than]
        return tasks[0] if len(tasks) == 1 else None
    task: str = wait_for(found, 60, f"one running task of {service}", interval=0.2)
    return task


def assert_task_holds(rig: Rig, task: str, nic: Nic, prefix: str, gateway: str) -> None:
    links = links_in(rig, task)
    # The node's NIC as eth0, and nothing else: Join gave a Gateway, so no
    # docker_gwbridge leg.
    assert [(l["name"], l["mac"]) for l in links] == [("lo", None), ("eth0", nic.mac)]
    assert f"inet {prefix}" in exec_in(rig, task, "ip", "-4", "addr", "show", "eth0")
    assert f"default via {gateway} dev eth0" in exec_in(rig, task, "ip", "route")
    ping(rig, task, gateway)


@pytest.fixture
def managed(managed_rig: Rig) -> Iterator[Rig]:
    yield managed_rig


def test_single_node_swarm(managed: Rig, subnet: int,
                           capsys: pytest.CaptureFixture[str]) -> None:
    rig = managed
    segment = rig.segment(f"10.77.{subnet}.1/24")
    nic = segment.add_nic(f"hs{subnet}a", addresses=(f"10.95.{subnet}.5/24",))
    before = snapshot(rig, nic)
    with swarm(rig):
        config_network(rig, f"cfg{subnet}", nic, f"10.77.{subnet}.0/24", f"10.77.{subnet}.1")
        error = docker_error(rig, "network", "create", "-d", "hostnic", "--scope", "swarm",
                             "--config-from", f"cfg{subnet}", f"bad{subnet}")
        assert "could not resolve driver hostnic" in error  # the README says: hostnic:latest
        rig.docker("network", "create", "-d", rig.driver, "--scope", "swarm",
                   "--config-from", f"cfg{subnet}", f"sw{subnet}")
        global_service(rig, f"svc{subnet}", f"sw{subnet}")
        task = the_task(rig, f"svc{subnet}")
        assert_task_holds(rig, task, nic, f"10.77.{subnet}.", f"10.77.{subnet}.1")
        assert rig.host_link_by_mac(nic.mac) is None

        # stop-first (the default): the old task gives the NIC back, the new one gets it.
        rig.docker("service", "update", "--force", "-d", f"svc{subnet}")
        moved = the_task(rig, f"svc{subnet}", other_than=task)
        assert_task_holds(rig, moved, nic, f"10.77.{subnet}.", f"10.77.{subnet}.1")

        rig.docker("service", "rm", f"svc{subnet}")
        wait_for(lambda: rig.host_link_by_mac(nic.mac) is not None
                 and snapshot(rig, nic) == before, 60, "the NIC to come home restored")

        figures = measure(rig.docker, f"sw{subnet}", runs=3)
        with capsys.disabled():
            print(f"\nswarm task start, median of 3: no network {figures['none']:.2f}s, "
                  f"hostnic {figures['hostnic']:.2f}s (x{figures['ratio']:.2f})")
        assert snapshot(rig, nic) == before
        rig.docker("network", "rm", f"sw{subnet}")
        wait_for(lambda: rig.docker("network", "rm", f"cfg{subnet}", check=False).returncode == 0,
                 30, "the config-only network to be free")


def test_legacy_socket_plugin_in_a_swarm(legacy_rig: Rig, subnet: int) -> None:
    """Docker's own refusal, from the swarm manager: the README points there."""
    rig = legacy_rig
    nic = rig.segment(f"10.77.{subnet}.1/24").add_nic(f"hs{subnet}a")
    with swarm(rig):
        config_network(rig, f"cfg{subnet}", nic, f"10.77.{subnet}.0/24", f"10.77.{subnet}.1")
        try:
            error = docker_error(rig, "network", "create", "-d", "hostnic", "--scope", "swarm",
                                 "--config-from", f"cfg{subnet}", f"sw{subnet}")
        finally:
            rig.docker("network", "rm", f"cfg{subnet}", check=False)
    assert "legacy plugin hostnic of type NetworkDriver is not supported in swarm mode" in error


@pytest.fixture
def second_node(managed_rig: Rig, plugin_dir: Any) -> Iterator[Rig]:
    """Another machine: its own dockerd and managed hostnic, in namespaces of
    its own, linked to the first rig's by a veth pair (10.98.0.0/30)."""
    rig = Rig(managed=True, plugin_dir=str(plugin_dir))
    try:
        rig.start()
        run("ip", "link", "add", "swarm0", "netns", managed_rig.netns, "type", "veth",
            "peer", "name", "swarm0", "netns", rig.netns)
        for node, address in ((managed_rig, "10.98.0.1/30"), (rig, "10.98.0.2/30")):
            run("ip", "-n", node.netns, "addr", "add", address, "dev", "swarm0")
            run("ip", "-n", node.netns, "link", "set", "swarm0", "up")
        yield rig
    finally:
        rig.close()  # its namespace goes, and the veth pair with it


def test_two_node_swarm(managed: Rig, second_node: Rig, subnet: int) -> None:
    first, second = managed, second_node
    # One L2 segment, one NIC per node, as two VMs in one VPC.
    segment = first.segment(f"10.77.{subnet}.1/24")
    nics = {first.netns: segment.add_nic(f"hs{subnet}a"),
            second.netns: _add_nic_to(second, segment, f"hs{subnet}b")}
    before = {node.netns: snapshot(node, nics[node.netns]) for node in (first, second)}
    with swarm(first, "10.98.0.1") as token:
        second.docker("swarm", "join", "--token", token, "--advertise-addr", "10.98.0.2",
                      "--listen-addr", "10.98.0.2:2377", "10.98.0.1:2377")
        try:
            # Each node's engine hands out addresses itself (a local-scope
            # driver, as macvlan): each node gets a range of its own.
            for node, ip_range in ((first, f"10.77.{subnet}.64/27"),
                                   (second, f"10.77.{subnet}.96/27")):
                config_network(node, f"cfg{subnet}", nics[node.netns], f"10.77.{subnet}.0/24",
                               f"10.77.{subnet}.1", "--ip-range", ip_range)
            first.docker("network", "create", "-d", first.driver, "--scope", "swarm",
                         "--config-from", f"cfg{subnet}", f"sw{subnet}")
            global_service(first, f"svc{subnet}", f"sw{subnet}")
            tasks = {node.netns: the_task(node, f"svc{subnet}") for node in (first, second)}
            addresses = set()
            for node in (first, second):
                task = tasks[node.netns]
                assert_task_holds(node, task, nics[node.netns], f"10.77.{subnet}.",
                                  f"10.77.{subnet}.1")
                addresses.add(exec_in(node, task, "ip", "-4", "-o", "addr", "show", "eth0")
                              .split()[3])
            assert len(addresses) == 2
            # Node to node, over the tenant segment.
            other = addresses.difference({exec_in(first, tasks[first.netns], "ip", "-4", "-o",
                                                  "addr", "show", "eth0").split()[3]}).pop()
            ping(first, tasks[first.netns], other.split("/")[0])
            # Service discovery spans the nodes: ConnectivityScope global puts
            # the network in the swarm's gossip, so each node's DNS knows the
            # other node's task (a local one would know only its own).
            for node in (first, second):
                answer = wait_for(lambda: _both_in(exec_in(
                    node, tasks[node.netns], "nslookup", f"tasks.svc{subnet}"), addresses),
                    30, "both tasks in the service's DNS")
                assert answer

            second_id = second.docker("info", "-f", "{{.Swarm.NodeID}}").stdout.strip()
            first.docker("node", "update", "--availability", "drain", second_id)
            # dockerd hands the NIC back down and bare; hostnic's restore follows.
            wait_for(lambda: second.host_link_by_mac(nics[second.netns].mac) is not None
                     and snapshot(second, nics[second.netns]) == before[second.netns], 60,
                     "the drained node's NIC to come home restored")
            assert first.host_link_by_mac(nics[first.netns].mac) is None  # still serving
            first.docker("service", "rm", f"svc{subnet}")
            wait_for(lambda: first.host_link_by_mac(nics[first.netns].mac) is not None
                     and snapshot(first, nics[first.netns]) == before[first.netns], 60,
                     "the first node's NIC to come home restored")
        finally:
            second.docker("swarm", "leave", "--force", check=False)
    for node in (first, second):
        node.docker("network", "rm", f"cfg{subnet}", check=False)


def _both_in(answer: str, addresses: set[str]) -> bool:
    return all(address.split("/")[0] in answer for address in addresses)


def _add_nic_to(node: Rig, segment: Any, name: str) -> Nic:
    """A NIC of ``node`` on another rig's segment (the segment is just a
    namespace with a bridge: its owner does not matter)."""
    peer = f"q{node.serial()}"
    run("ip", "link", "add", name, "netns", node.netns, "type", "veth",
        "peer", "name", peer, "netns", segment.netns)
    run("ip", "-n", segment.netns, "link", "set", peer, "master", "br0", "up")
    run("ip", "-n", node.netns, "link", "set", name, "up")
    mac = run("ip", "-n", node.netns, "-br", "link", "show", name).stdout.split()[2]
    return Nic(name=name, mac=mac, segment=segment)
