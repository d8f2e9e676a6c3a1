"""hostnic driven by a real dockerd through the docker CLI, as a user would."""

from __future__ import annotations

import json
import signal
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests.e2e.conftest import BOTH_MODES
from tests.e2e.rig import IMAGE, Nic, Rig, wait_for

pytestmark = pytest.mark.e2e


def create_network(rig: Rig, cleanup: list, name: str, subnet: int, *opts: str) -> str:
    result = rig.docker("network", "create", "-d", rig.driver, *opts,
                        "--subnet", f"10.77.{subnet}.0/24", "--gateway", f"10.77.{subnet}.1",
                        name)
    cleanup.append(("network", "rm", name))
    return result.stdout.strip()


def run_container(rig: Rig, cleanup: list, name: str, *args: str) -> None:
    rig.docker("run", "-d", "--name", name, *args, IMAGE, "sleep", "3600")
    cleanup.append(("rm", "-f", name))


def exec_in(rig: Rig, name: str, *cmd: str) -> str:
    return rig.docker("exec", name, *cmd).stdout


def links_in(rig: Rig, name: str) -> list[dict[str, Any]]:
    links: list[dict[str, Any]] = []
    for line in exec_in(rig, name, "ip", "-o", "link").splitlines():
        fields = line.split()
        ifname = fields[1].rstrip(":").split("@")[0]
        mac = fields[fields.index("link/ether") + 1] if "link/ether" in fields else None
        links.append({"name": ifname, "mac": mac})
    return links


def ping(rig: Rig, name: str, address: str, tries: int = 5) -> None:
    """Ping from the container; IPv6 may need a moment for DAD, so retry a little."""
    command = ["ping", "-c", "1", "-W", "2", address]
    for _ in range(tries):
        if rig.docker("exec", name, *command, check=False).returncode == 0:
            return
    raise AssertionError(f"{name} cannot ping {address}")


def snapshot(rig: Rig, nic: Nic) -> dict[str, Any]:
    """What must come back: name, MTU, MAC, admin state and addresses."""
    link = rig.host_link_by_mac(nic.mac)
    assert link is not None, f"{nic.mac} is not in the host namespace"
    return {"name": link["ifname"], "mtu": link["mtu"], "mac": link["address"],
            "up": "UP" in link["flags"],
            "addresses": sorted(f"{a['local']}/{a['prefixlen']}" for a in link["addr_info"]
                                if a.get("scope") != "link")}


def docker_error(rig: Rig, *args: str) -> str:
    result = rig.docker(*args, check=False)
    assert result.returncode != 0, f"docker {' '.join(args)} succeeded"
    return result.stderr.strip()


# 1 ---------------------------------------------------------------------------

@BOTH_MODES
@pytest.mark.parametrize("by", ["hostnic_mac", "hostnic_name"])
def test_container_gets_the_nic_as_eth0(rig: Rig, cleanup: list, subnet: int, by: str) -> None:
    segment = rig.segment(f"10.77.{subnet}.1/24")
    nic = segment.add_nic(f"hn{subnet}a")
    value = nic.mac if by == "hostnic_mac" else nic.name
    create_network(rig, cleanup, f"net{subnet}", subnet, "-o", f"{by}={value}")
    run_container(rig, cleanup, f"c{subnet}", "--network", f"net{subnet}",
                  "--ip", f"10.77.{subnet}.10")

    links = links_in(rig, f"c{subnet}")
    assert [l["name"] for l in links] == ["lo", "eth0"]  # no docker_gwbridge leg
    assert links[1]["mac"] == nic.mac
    assert f"inet 10.77.{subnet}.10/24" in exec_in(rig, f"c{subnet}", "ip", "-4", "addr")
    assert f"default via 10.77.{subnet}.1 dev eth0" in exec_in(rig, f"c{subnet}", "ip", "route")
    ping(rig, f"c{subnet}", f"10.77.{subnet}.1")
    assert rig.host_link(nic.name) is None  # it is in the container now
    assert rig.host_link("docker_gwbridge") is None


# 2 ---------------------------------------------------------------------------

@BOTH_MODES
def test_stop_and_rm_give_the_nic_back_as_it_was(rig: Rig, cleanup: list, subnet: int) -> None:
    segment = rig.segment(f"10.77.{subnet}.1/24")
    nic = segment.add_nic(f"hn{subnet}a", mtu=1400,
                          addresses=(f"10.88.{subnet}.5/24", f"fd88:{subnet}::5/64"))
    before = snapshot(rig, nic)
    assert before["up"] and before["mtu"] == 1400 and len(before["addresses"]) == 2
    create_network(rig, cleanup, f"net{subnet}", subnet, "-o", f"hostnic_mac={nic.mac}")
    run_container(rig, cleanup, f"c{subnet}", "--network", f"net{subnet}")
    assert rig.host_link_by_mac(nic.mac) is None

    rig.docker("stop", "-t", "1", f"c{subnet}")
    assert snapshot(rig, nic) == before
    rig.docker("rm", f"c{subnet}")
    assert snapshot(rig, nic) == before

    # A NIC that was down comes back down.
    rig.docker("run", "--rm", "--network", f"net{subnet}", IMAGE, "true")
    assert snapshot(rig, nic) == before


# 3 ---------------------------------------------------------------------------

@BOTH_MODES
def test_restart_rerun_connect_and_disconnect(rig: Rig, cleanup: list, subnet: int) -> None:
    segment = rig.segment(f"10.77.{subnet}.1/24")
    first = segment.add_nic(f"hn{subnet}a")
    create_network(rig, cleanup, f"net{subnet}", subnet, "-o", f"hostnic_mac={first.mac}")
    run_container(rig, cleanup, f"c{subnet}", "--network", f"net{subnet}")
    rig.docker("restart", "-t", "1", f"c{subnet}")
    ping(rig, f"c{subnet}", f"10.77.{subnet}.1")
    rig.docker("rm", "-f", f"c{subnet}")
    assert snapshot(rig, first)["name"] == first.name

    run_container(rig, cleanup, f"d{subnet}", "--network", f"net{subnet}")
    ping(rig, f"d{subnet}", f"10.77.{subnet}.1")

    other = subnet + 100
    second_segment = rig.segment(f"10.77.{other}.1/24")
    second = second_segment.add_nic(f"hn{other}b", addresses=(f"10.89.{subnet}.7/24",))
    before = snapshot(rig, second)
    create_network(rig, cleanup, f"net{other}", other, "-o", f"hostnic_mac={second.mac}")
    rig.docker("network", "connect", f"net{other}", f"d{subnet}")
    links = links_in(rig, f"d{subnet}")
    assert [l["mac"] for l in links if l["name"] == "eth1"] == [second.mac]
    ping(rig, f"d{subnet}", f"10.77.{other}.1")
    rig.docker("network", "disconnect", f"net{other}", f"d{subnet}")
    assert snapshot(rig, second) == before
    assert [l["name"] for l in links_in(rig, f"d{subnet}")] == ["lo", "eth0"]


# 4 ---------------------------------------------------------------------------

def test_pool_serves_one_container_per_nic(rig: Rig, cleanup: list, subnet: int) -> None:
    segment = rig.segment(f"10.77.{subnet}.1/24")
    nics = [segment.add_nic(f"hn{subnet}{x}") for x in "abc"]
    network_id = create_network(rig, cleanup, f"net{subnet}", subnet,
                                "-o", "hostnic_mac=" + ",".join(n.mac for n in nics))
    for i in range(3):
        run_container(rig, cleanup, f"c{subnet}-{i}", "--network", f"net{subnet}")
    macs = {links_in(rig, f"c{subnet}-{i}")[1]["mac"] for i in range(3)}
    assert macs == {n.mac for n in nics}

    error = docker_error(rig, "run", "-d", "--name", f"c{subnet}-3", "--network",
                         f"net{subnet}", IMAGE, "sleep", "60")
    cleanup.append(("rm", "-f", f"c{subnet}-3"))
    # The refusal names each NIC's holder.
    assert f"network {network_id[:12]} has 3 NICs, all in use (" in error
    assert "); add NICs to its pool or stop a container" in error
    assert all(f"{n.mac} by endpoint " in error for n in nics), error  # (away: no name)
    for i in range(3):
        ping(rig, f"c{subnet}-{i}", f"10.77.{subnet}.1")

    # Pinning: free one NIC, then ask for it by MAC.
    freed = links_in(rig, f"c{subnet}-1")[1]["mac"]
    rig.docker("rm", "-f", f"c{subnet}-1")
    rig.docker("rm", "-f", f"c{subnet}-3")
    run_container(rig, cleanup, f"p{subnet}", "--network", f"net{subnet}",
                  "--mac-address", freed)
    assert links_in(rig, f"p{subnet}")[1]["mac"] == freed
    error = docker_error(rig, "run", "--rm", "--network", f"net{subnet}", "--mac-address",
                         "02:42:00:00:00:99", IMAGE, "true")
    assert f"NIC 02:42:00:00:00:99 is not in the pool of network {network_id[:12]}" in error


def test_pin_with_driver_opt_on_connect(rig: Rig, cleanup: list, subnet: int) -> None:
    segment = rig.segment(f"10.77.{subnet}.1/24")
    nics = [segment.add_nic(f"hn{subnet}{x}") for x in "ab"]
    create_network(rig, cleanup, f"net{subnet}", subnet,
                   "-o", "hostnic_mac=" + ",".join(n.mac for n in nics))
    other = subnet + 100
    rig.segment(f"10.77.{other}.1/24")
    base = rig.segment(f"10.77.{other}.1/24").add_nic(f"hn{other}z")
    create_network(rig, cleanup, f"net{other}", other, "-o", f"hostnic_mac={base.mac}")
    run_container(rig, cleanup, f"c{subnet}", "--network", f"net{other}")
    rig.docker("network", "connect", "--driver-opt", f"hostnic_mac={nics[1].mac.upper()}",
               f"net{subnet}", f"c{subnet}")
    assert [l["mac"] for l in links_in(rig, f"c{subnet}") if l["name"] == "eth1"] == [nics[1].mac]


# 5 ---------------------------------------------------------------------------

@BOTH_MODES
def test_network_create_refusals(rig: Rig, cleanup: list, subnet: int) -> None:
    segment = rig.segment(f"10.77.{subnet}.1/24")
    nic = segment.add_nic(f"hn{subnet}a")
    network_id = create_network(rig, cleanup, f"net{subnet}", subnet, "-o", f"hostnic_mac={nic.mac}")

    def refused(*opts: str) -> str:
        error = docker_error(rig, "network", "create", "-d", rig.driver, *opts, "--subnet",
                             f"10.78.{subnet}.0/24", f"bad{subnet}")
        cleanup.append(("network", "rm", f"bad{subnet}"))
        return error

    other_notation = nic.mac.replace(":", "-").upper()
    assert (f"NIC {nic.mac} ({nic.name}) is already in hostnic network {network_id[:12]}; "
            f"a NIC can serve one network only") in refused("-o", f"hostnic_mac={other_notation}")
    assert ("hostnic needs the NIC to hand out: give -o hostnic_mac=MAC, -o "
            "hostnic_name=IFNAME or -o hostnic_pci=PCI (several may be comma-separated)") in refused()
    assert "'52:54:00:zz:00:01' is not a MAC address" in refused("-o", "hostnic_mac=52:54:00:zz:00:01")
    assert ("hostnic does not know the option colour; it takes hostnic_mac=MAC[,MAC...], "
            "hostnic_name=IFNAME[,IFNAME...] and hostnic_pci=PCI[,PCI...]") in refused(
                "-o", f"hostnic_mac={nic.mac}", "-o", "colour=red")
    assert ("there is no NIC with MAC 02:42:de:ad:be:ef in the host network namespace"
            in refused("-o", "hostnic_mac=02:42:de:ad:be:ef"))

    mgmt_segment = rig.segment(f"10.79.{subnet}.1/24")
    mgmt = mgmt_segment.add_nic(f"hn{subnet}m", addresses=(f"10.79.{subnet}.2/24",))
    from tests.e2e.rig import run
    run("ip", "-n", rig.netns, "route", "add", "default", "via", f"10.79.{subnet}.1")
    try:
        assert (f"NIC {mgmt.mac} ({mgmt.name}) carries the host's default route"
                in refused("-o", f"hostnic_name={mgmt.name}"))
    finally:
        run("ip", "-n", rig.netns, "route", "del", "default")
    listed = rig.docker("network", "ls", "--format", "{{.Name}}").stdout.split()
    assert f"bad{subnet}" not in listed


# 6 ---------------------------------------------------------------------------

def container_with_a_lent_nic(rig: Rig, cleanup: list, subnet: int) -> tuple[Nic, dict[str, Any]]:
    """Network net<subnet> of one addressed NIC, lent to running container c<subnet>;
    returns the NIC and its state before lending."""
    segment = rig.segment(f"10.77.{subnet}.1/24")
    nic = segment.add_nic(f"hn{subnet}a", addresses=(f"10.90.{subnet}.5/24",))
    before = snapshot(rig, nic)
    create_network(rig, cleanup, f"net{subnet}", subnet, "-o", f"hostnic_mac={nic.mac}")
    run_container(rig, cleanup, f"c{subnet}", "--network", f"net{subnet}")
    return nic, before


@BOTH_MODES
def test_plugin_sigkill_and_restart_loses_nothing(rig: Rig, cleanup: list, subnet: int) -> None:
    nic, before = container_with_a_lent_nic(rig, cleanup, subnet)

    rig.kill_plugin(signal.SIGKILL)
    rig.start_plugin()
    ping(rig, f"c{subnet}", f"10.77.{subnet}.1")
    rig.docker("stop", "-t", "1", f"c{subnet}")
    assert snapshot(rig, nic) == before
    rig.docker("rm", f"c{subnet}")
    run_container(rig, cleanup, f"d{subnet}", "--network", f"net{subnet}")
    ping(rig, f"d{subnet}", f"10.77.{subnet}.1")


@BOTH_MODES
def test_dockerd_restart_gives_the_nic_back(rig: Rig, cleanup: list, subnet: int) -> None:
    nic, before = container_with_a_lent_nic(rig, cleanup, subnet)
    assert rig.host_link_by_mac(nic.mac) is None

    rig.stop_dockerd()
    rig.start_dockerd()
    wait_for(lambda: rig.host_link_by_mac(nic.mac) is not None, 30, "the NIC to come back")
    wait_for(lambda: snapshot(rig, nic) == before, 30, "the NIC to be restored")
    rig.docker("rm", "-f", f"c{subnet}")
    run_container(rig, cleanup, f"d{subnet}", "--network", f"net{subnet}")
    ping(rig, f"d{subnet}", f"10.77.{subnet}.1")


# 7 ---------------------------------------------------------------------------

def test_nic_named_like_the_containers_eth0(rig: Rig, cleanup: list, subnet: int) -> None:
    segment = rig.segment(f"10.77.{subnet}.1/24")
    first = segment.add_nic(f"hn{subnet}a")
    other = subnet + 100
    second = rig.segment(f"10.77.{other}.1/24").add_nic("eth0", addresses=(f"10.92.{subnet}.5/24",))
    before = snapshot(rig, second)
    create_network(rig, cleanup, f"net{subnet}", subnet, "-o", f"hostnic_mac={first.mac}")
    create_network(rig, cleanup, f"net{other}", other, "-o", "hostnic_name=eth0")
    run_container(rig, cleanup, f"c{subnet}", "--network", f"net{subnet}")
    rig.docker("network", "connect", f"net{other}", f"c{subnet}")
    links = {l["name"]: l["mac"] for l in links_in(rig, f"c{subnet}")}
    assert links == {"lo": None, "eth0": first.mac, "eth1": second.mac}
    ping(rig, f"c{subnet}", f"10.77.{other}.1")
    rig.docker("network", "disconnect", f"net{other}", f"c{subnet}")
    assert snapshot(rig, second) == before


# 8 ---------------------------------------------------------------------------

@BOTH_MODES
def test_ipv6(rig: Rig, cleanup: list, subnet: int) -> None:
    segment = rig.segment(f"10.77.{subnet}.1/24", f"fd77:{subnet}::1/64")
    nic = segment.add_nic(f"hn{subnet}a")
    create_network(rig, cleanup, f"net{subnet}", subnet, "-o", f"hostnic_mac={nic.mac}",
                   "--ipv6", "--subnet", f"fd77:{subnet}::/64", "--gateway", f"fd77:{subnet}::1")
    run_container(rig, cleanup, f"c{subnet}", "--network", f"net{subnet}",
                  "--ip6", f"fd77:{subnet}::10")
    assert f"inet6 fd77:{subnet}::10/64" in exec_in(rig, f"c{subnet}", "ip", "-6", "addr")
    assert f"default via fd77:{subnet}::1 dev eth0" in exec_in(rig, f"c{subnet}", "ip", "-6", "route")
    ping(rig, f"c{subnet}", f"fd77:{subnet}::1", tries=10)


# 9 ---------------------------------------------------------------------------

def test_parallel_networks_and_containers(rig: Rig, cleanup: list, subnet: int) -> None:
    base = 200
    segment = rig.segment(f"10.77.{base}.1/24")
    from tests.e2e.rig import run
    for i in range(1, 10):
        run("ip", "-n", segment.netns, "addr", "add", f"10.77.{base + i}.1/24", "dev", "br0")
    nics = [segment.add_nic(f"hnp{i}", addresses=(f"10.93.{i}.5/24",)) for i in range(10)]
    before = [snapshot(rig, n) for n in nics]

    def create(i: int) -> str:
        return create_network(rig, cleanup, f"par{i}", base + i, "-o", f"hostnic_mac={nics[i].mac}")

    def start(i: int) -> None:
        run_container(rig, cleanup, f"par{i}", "--network", f"par{i}", "--ip", f"10.77.{base + i}.10")

    with ThreadPoolExecutor(10) as pool:
        list(pool.map(create, range(10)))
        list(pool.map(start, range(10)))
        for i in range(10):
            assert links_in(rig, f"par{i}")[1]["mac"] == nics[i].mac
            ping(rig, f"par{i}", f"10.77.{base + i}.1")
        list(pool.map(lambda i: rig.docker("rm", "-f", f"par{i}"), range(10)))
    assert [snapshot(rig, n) for n in nics] == before


# 10 --------------------------------------------------------------------------

def test_start_time_against_network_none_and_macvlan(rig: Rig, cleanup: list, subnet: int,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    from bench.start_time import measure
    segment = rig.segment(f"10.77.{subnet}.1/24")
    nic = segment.add_nic(f"hn{subnet}a")
    parent = segment.add_nic(f"mv{subnet}a")
    create_network(rig, cleanup, f"net{subnet}", subnet, "-o", f"hostnic_mac={nic.mac}")
    other = subnet + 100
    rig.docker("network", "create", "-d", "macvlan", "-o", f"parent={parent.name}",
               "--subnet", f"10.77.{other}.0/24", f"mv{subnet}")
    cleanup.append(("network", "rm", f"mv{subnet}"))
    figures = measure(rig.docker, f"net{subnet}", runs=10, macvlan=f"mv{subnet}")
    with capsys.disabled():
        print(f"\ncontainer start, median of 10: --network none {figures['none']:.3f}s, "
              f"hostnic {figures['hostnic']:.3f}s (x{figures['ratio']:.2f}), "
              f"macvlan {figures['macvlan']:.3f}s (x{figures['macvlan_ratio']:.2f})")
    assert snapshot(rig, nic)["name"] == nic.name


# admin API ------------------------------------------------------------------

@BOTH_MODES
def test_admin_cli_shows_what_dockerd_holds(rig: Rig, cleanup: list, subnet: int) -> None:
    import os
    import sys
    from tests.e2e.rig import run
    ctl = os.path.join(os.path.dirname(sys.executable), "hostnic-ctl")
    segment = rig.segment(f"10.77.{subnet}.1/24")
    nics = [segment.add_nic(f"hn{subnet}{x}") for x in "ab"]
    network_id = create_network(rig, cleanup, f"net{subnet}", subnet,
                                "-o", "hostnic_mac=" + ",".join(n.mac for n in nics))
    run_container(rig, cleanup, f"c{subnet}", "--network", f"net{subnet}")
    sandbox = rig.docker("inspect", "-f", "{{.NetworkSettings.SandboxKey}}", f"c{subnet}").stdout.strip()
    mac = links_in(rig, f"c{subnet}")[1]["mac"]

    def admin(*args: str) -> Any:
        return json.loads(run(*rig.inside(ctl, "--json", *args)).stdout)

    [endpoint] = [e for e in admin("endpoints") if e["network"] == network_id]
    assert (endpoint["mac"], endpoint["sandbox_key"], endpoint["phase"]) == (mac, sandbox, "joined")
    by_mac = {n["mac"]: n for n in admin("nics")}
    assert by_mac[mac]["status"] == "in-container"
    [free] = [n.mac for n in nics if n.mac != mac]
    assert by_mac[free]["status"] == "in-pool"
    refused = subprocess_run(rig.inside(ctl, "release", mac))
    assert refused.returncode == 1 and "inside the live namespace" in refused.stderr
    # The daemon that answers is the one dockerd uses (a managed plugin's
    # pid is that of its own pid namespace: compare its driver socket).
    status = admin("status")
    if rig.managed:
        assert status["endpoints"]["driver"].startswith("unix:/run/docker/plugins/hostnic.sock")
        assert status["state_dir"] == "/var/lib/hostnic"
    else:
        assert status["pid"] == rig.plugin.pid  # type: ignore[union-attr]


def subprocess_run(cmd: list[str]) -> Any:
    import subprocess
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30)
