"""hostnic under real CNI runtimes: Debian 12's containerd (``ctr run --cni``)
and podman (its CNI backend), each in a private rig (tests/e2e/cni_rig.py);
and Docker and a CNI runtime on one host sharing one pool."""

from __future__ import annotations

import json
import os
from typing import Any, Iterator

import pytest

from tests.e2e.cni_rig import IMAGE_REF, SHIM, CNIRig
from tests.e2e.rig import IMAGE, Nic, Rig, run

pytestmark = pytest.mark.e2e
PODMAN_LIMITS = ("--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024")


@pytest.fixture(scope="module")
def cni_rig() -> Iterator[CNIRig]:
    if os.geteuid() != 0:
        pytest.fail("the end-to-end suite needs root (namespaces, veth, runtimes)")
    rig = CNIRig()
    try:
        rig.start()
        rig.start_containerd()
        rig.podman_image()
        yield rig
    finally:
        rig.close()


def static_ipam(address: str, gateway: str) -> dict[str, Any]:
    return {"type": "static", "addresses": [{"address": address, "gateway": gateway}],
            "routes": [{"dst": "0.0.0.0/0"}]}


def home(rig: Rig, nic: Nic) -> tuple[Any, ...]:
    """The NIC as the host has it: name, MAC, MTU, admin state, addresses, a sysctl."""
    link = rig.host_link_by_mac(nic.mac)
    assert link is not None, f"{nic.mac} is not in the host namespace"
    arp = run("ip", "netns", "exec", rig.netns, "sysctl", "-n",
              f"net.ipv4.conf.{link['ifname']}.arp_ignore").stdout.strip()
    return (link["ifname"], link["mtu"], "UP" in link["flags"],  # type: ignore[operator]
            sorted(f"{a['local']}/{a['prefixlen']}" for a in link["addr_info"]  # type: ignore[attr-defined]
                   if a.get("scope") == "global"), arp)


def configured_nic(rig: Rig, name: str, subnet: int) -> Nic:
    """A NIC with a life of its own on the host: an address, MTU 1450, a sysctl."""
    segment = rig.segment(f"10.88.{subnet}.1/24")
    nic = segment.add_nic(name, mtu=1450, addresses=(f"192.168.{subnet}.4/24",))
    run("ip", "netns", "exec", rig.netns, "sysctl", "-qw", f"net.ipv4.conf.{name}.arp_ignore=2")
    return nic


def test_containerd_task_gets_the_nic_and_gives_it_back(cni_rig: CNIRig) -> None:
    nic = configured_nic(cni_rig, "ens20", 20)
    before = home(cni_rig, nic)
    cni_rig.network("tenant", {"type": "hostnic", "mac": nic.mac,
                               "ipam": static_ipam("10.88.20.5/24", "10.88.20.1")})
    ran = cni_rig.ctr("run", "--rm", "--cni", IMAGE_REF, "task20", "sh", "-c",
                      "ip -o link show eth0; ip -o -4 addr show eth0; "
                      "ping -c 1 -W 2 10.88.20.1", timeout=120)
    assert nic.mac in ran.stdout and "10.88.20.5/24" in ran.stdout, ran.stdout
    assert "1 packets received" in ran.stdout, ran.stdout
    # ctr deletes the task, then calls DEL without the namespace: hostnic
    # held it, so the NIC is home as it was.
    assert home(cni_rig, nic) == before
    assert cni_rig.claims() == []


def test_podman_container_gets_the_nic_and_rm_f_gives_it_back(cni_rig: CNIRig) -> None:
    nic = configured_nic(cni_rig, "ens21", 21)
    before = home(cni_rig, nic)
    cni_rig.network("pods", {"type": "hostnic", "mac": nic.mac,
                             "ipam": static_ipam("10.88.21.5/24", "10.88.21.1")})
    ran = cni_rig.podman("run", "--rm", "--network", "pods", *PODMAN_LIMITS,
                         "--cap-add", "NET_RAW", IMAGE_REF, "sh", "-c",
                         "ip -o link show eth0; ip -o -4 addr show eth0; "
                         "ping -c 1 -W 2 10.88.21.1", timeout=180)
    assert nic.mac in ran.stdout and "10.88.21.5/24" in ran.stdout, ran.stdout
    assert "1 packets received" in ran.stdout, ran.stdout
    assert home(cni_rig, nic) == before

    cni_rig.podman("run", "-d", "--name", "sleeper", "--network", "pods", *PODMAN_LIMITS,
                   IMAGE_REF, "sleep", "600", timeout=180)
    [attachment] = cni_rig.claims()
    assert (attachment["owner"], attachment["cni"]["network"], attachment["cni"]["ifname"],
            attachment["mac"]) == ("cni", "pods", "eth0", nic.mac)
    assert cni_rig.host_link_by_mac(nic.mac) is None  # inside the container
    cni_rig.podman("rm", "-f", "sleeper", timeout=180)
    assert home(cni_rig, nic) == before
    assert cni_rig.claims() == []


def shim(rig: Rig, command: str, config: dict[str, Any], netns: str,
         container: str) -> tuple[int, Any]:
    """hostnic-cni run in the Docker rig as a runtime would run it."""
    env = ["env", f"CNI_COMMAND={command}", f"CNI_CONTAINERID={container}",
           "CNI_IFNAME=net1", f"CNI_NETNS={netns}", "CNI_PATH=/usr/lib/cni"]
    done = run(*rig.inside(*env, SHIM), input=json.dumps(config), check=False)
    return done.returncode, json.loads(done.stdout) if done.stdout.strip() else None


def test_docker_and_a_pod_each_refuse_what_the_other_holds(rig: Rig, subnet: int) -> None:
    segment = rig.segment(f"10.77.{subnet}.1/24")
    nic = segment.add_nic(f"hn{subnet}cni")
    rig.docker("network", "create", "-d", rig.driver, "-o", f"hostnic_mac={nic.mac}",
               "--subnet", f"10.77.{subnet}.0/24", "--gateway", f"10.77.{subnet}.1",
               f"shared{subnet}")
    pod = f"/run/netns/pod{subnet}"
    run(*rig.inside("sh", "-c", f"ip netns add pod{subnet}"))
    config = {"cniVersion": "1.0.0", "name": "shared", "type": "hostnic", "mac": nic.mac,
              "ipam": static_ipam(f"10.77.{subnet}.9/24", f"10.77.{subnet}.1")}
    try:
        rig.docker("run", "-d", "--name", f"c{subnet}", "--network", f"shared{subnet}",
                   IMAGE, "sleep", "600")
        status, error = shim(rig, "ADD", config, pod, "p" * 64)
        assert status == 1 and error["code"] == 100, error
        assert f"{nic.mac} by endpoint " in error["msg"], error

        rig.docker("rm", "-f", f"c{subnet}")
        status, result = shim(rig, "ADD", config, pod, "p" * 64)
        assert status == 0, result
        refused = rig.docker("run", "--rm", "--network", f"shared{subnet}", IMAGE, "true",
                             check=False)
        assert refused.returncode != 0
        assert f"by container {'p' * 12} as net1 (CNI network 'shared')" in refused.stderr
        assert shim(rig, "DEL", config, pod, "p" * 64) == (0, None)
        rig.docker("run", "--rm", "--network", f"shared{subnet}", IMAGE, "true")
    finally:
        shim(rig, "DEL", config, pod, "p" * 64)
        rig.docker("rm", "-f", f"c{subnet}", check=False)
        rig.docker("network", "rm", f"shared{subnet}", check=False)
        run(*rig.inside("sh", "-c", f"ip netns del pod{subnet}"), check=False)
