"""Adopt mode and the full restore, as dockerd drives them: a container gets
the NIC's own configuration with no address flags, through restarts of the
container, of hostnic and of dockerd; a NIC comes back with everything a
production NIC carries; NICs that others depend on are refused."""

from __future__ import annotations

import json
import signal
from typing import Any, Iterator

import pytest

from tests.e2e.conftest import BOTH_MODES
from tests.e2e.rig import IMAGE, Nic, Rig, run, wait_for
from tests.e2e.test_docker import docker_error, exec_in, links_in, ping, run_container

pytestmark = pytest.mark.e2e


def host(rig: Rig, *args: str) -> str:
    """An ``ip`` command in dockerd's network namespace."""
    return run("ip", "-n", rig.netns, *args).stdout


def full_snapshot(rig: Rig, nic: Nic) -> dict[str, Any]:
    """Everything hostnic promises to give back, as ``ip`` and /proc show it."""
    [link] = [l for l in json.loads(host(rig, "-j", "-d", "addr", "show"))
              if l.get("address") == nic.mac]
    name = link["ifname"]
    addresses = [(a["family"], a["local"], a["prefixlen"], a.get("label"),
                  bool(a.get("noprefixroute")), bool(a.get("nodad")),
                  a.get("valid_life_time") == 4294967295)  # a lease ages: only forever or not
                 for a in link["addr_info"] if a.get("scope") != "link"]
    routes = []
    for family in ("-4", "-6"):
        for route in json.loads(host(rig, family, "-j", "route", "show", "table", "all",
                                     "dev", name)):
            if route.get("protocol") in ("kernel", "ra") or route.get("table") == "local":
                continue
            routes.append(tuple(sorted((k, str(v)) for k, v in route.items()
                                       if k not in ("dev", "flags", "pref", "expires"))))
    sysctls = run(*rig.inside("sh", "-c", f"grep -r . /proc/sys/net/ipv4/conf/{name} "
                                          f"/proc/sys/net/ipv6/conf/{name} 2>/dev/null"),
                  check=False).stdout
    return {"name": name, "mtu": link["mtu"], "up": "UP" in link["flags"],
            "txqlen": link.get("txqlen"), "group": link.get("group"),
            "alias": link.get("ifalias"), "altnames": link.get("altnames", []),
            "addresses": addresses, "routes": sorted(routes),
            "sysctls": sorted(line.replace("/proc/sys/net/", "").replace(f"/conf/{name}", "")
                              for line in sysctls.splitlines())}


@pytest.fixture
def links(rig: Rig) -> Iterator[list[str]]:
    """Host links the test made outside a segment (bridges, macvlans), removed after."""
    made: list[str] = []
    yield made
    for name in reversed(made):
        run("ip", "-n", rig.netns, "link", "del", name, check=False)


def management_nic(rig: Rig, links: list[str], subnet: int) -> Nic:
    """The NIC the host itself leaves by: the main table's best defaults."""
    segment = rig.segment(f"10.76.{subnet}.1/24", f"fd76:{subnet}::1/64")
    nic = segment.add_nic(f"mg{subnet}", addresses=(f"10.76.{subnet}.2/24",))
    links.append(nic.name)
    host(rig, "-6", "addr", "add", f"fd76:{subnet}::2/64", "dev", nic.name, "nodad")
    host(rig, "route", "add", "default", "via", f"10.76.{subnet}.1", "metric", "100")
    host(rig, "-6", "route", "add", "default", "via", f"fd76:{subnet}::1", "dev", nic.name,
         "metric", "100")
    return nic


def tenant_nic(rig: Rig, subnet: int) -> Nic:
    """A tenant NIC as the cloud configured it: an IPv4 and an IPv6 address,
    its own IPv4 default (a second DHCP default, higher metric), its IPv6
    default in a policy table, and a route to one more network beyond its
    gateway."""
    segment = rig.segment(f"10.78.{subnet}.1/24", f"fd78:{subnet}::1/64")
    # The network beyond the gateway: an address of the router's own.
    run("ip", "-n", segment.netns, "addr", "add", f"10.79.{subnet}.1/24", "dev", "br0")
    nic = segment.add_nic(f"tn{subnet}", addresses=(f"10.78.{subnet}.10/24",))
    host(rig, "-6", "addr", "add", f"fd78:{subnet}::10/64", "dev", nic.name, "nodad")
    host(rig, "route", "add", "default", "via", f"10.78.{subnet}.1", "dev", nic.name,
         "metric", "500")
    host(rig, "-6", "route", "add", "default", "via", f"fd78:{subnet}::1", "dev", nic.name,
         "table", "100")
    host(rig, "route", "add", f"10.79.{subnet}.0/24", "via", f"10.78.{subnet}.1")
    return nic


def assert_adopted(rig: Rig, container: str, nic: Nic, subnet: int) -> None:
    assert links_in(rig, container)[1] == {"name": "eth0", "mac": nic.mac}
    assert f"inet 10.78.{subnet}.10/24" in exec_in(rig, container, "ip", "-4", "addr")
    assert f"inet6 fd78:{subnet}::10/64" in exec_in(rig, container, "ip", "-6", "addr")
    routes = exec_in(rig, container, "ip", "route")
    assert f"default via 10.78.{subnet}.1 dev eth0" in routes
    assert f"10.79.{subnet}.0/24 via 10.78.{subnet}.1 dev eth0" in routes
    assert f"default via fd78:{subnet}::1 dev eth0" in exec_in(rig, container, "ip", "-6", "route")
    inspected = json.loads(rig.docker("inspect", container).stdout)[0]
    [settings] = inspected["NetworkSettings"]["Networks"].values()
    assert (settings["IPAddress"], settings["IPPrefixLen"]) == (f"10.78.{subnet}.10", 24)
    assert settings["GlobalIPv6Address"] == f"fd78:{subnet}::10"
    ping(rig, container, f"10.78.{subnet}.1")
    ping(rig, container, f"10.79.{subnet}.1")  # only through the gateway
    ping(rig, container, f"fd78:{subnet}::1", tries=10)


@BOTH_MODES
def test_an_adopt_network_hands_the_nic_with_its_own_configuration(
        rig: Rig, cleanup: list, links: list[str], subnet: int) -> None:
    management = management_nic(rig, links, subnet)
    nic = tenant_nic(rig, subnet)
    before = full_snapshot(rig, nic)
    # The host's own way out is refused; the tenant NIC, with defaults of its
    # own that the host does not use, is not.
    error = docker_error(rig, "network", "create", "-d", rig.driver, "--ipam-driver", "null",
                         "-o", f"hostnic_name={management.name}", f"mgmt{subnet}")
    assert "carries the host's default route" in error
    assert "does not handle IPv6" in docker_error(
        rig, "network", "create", "-d", rig.driver, "--ipam-driver", "null", "--ipv6",
        "-o", f"hostnic_name={nic.name}", f"tenant{subnet}")  # dockerd's own refusal
    rig.docker("network", "create", "-d", rig.driver, "--ipam-driver", "null",
               "-o", f"hostnic_name={nic.name}", f"tenant{subnet}")
    cleanup.append(("network", "rm", f"tenant{subnet}"))
    container = f"a{subnet}"
    run_container(rig, cleanup, container, "--network", f"tenant{subnet}")
    assert_adopted(rig, container, nic, subnet)

    rig.docker("restart", "-t", "1", container)
    assert_adopted(rig, container, nic, subnet)

    rig.kill_plugin(signal.SIGKILL)
    rig.start_plugin()
    rig.docker("restart", "-t", "1", container)
    assert_adopted(rig, container, nic, subnet)

    rig.stop_dockerd()
    rig.start_dockerd()
    wait_for(lambda: rig.host_link_by_mac(nic.mac) is not None, 30, "the NIC to come back")
    wait_for(lambda: full_snapshot(rig, nic) == before, 30, "the NIC to be restored")
    rig.docker("rm", "-f", container)
    run_container(rig, cleanup, container, "--network", f"tenant{subnet}")
    assert_adopted(rig, container, nic, subnet)
    rig.docker("rm", "-f", container)
    assert full_snapshot(rig, nic) == before


def test_an_adopt_network_refuses_a_nic_with_no_address_to_adopt(
        rig: Rig, cleanup: list, subnet: int) -> None:
    nic = rig.segment(f"10.78.{subnet}.1/24").add_nic(f"tn{subnet}")
    rig.docker("network", "create", "-d", rig.driver, "--ipam-driver", "null",
               "-o", f"hostnic_name={nic.name}", f"tenant{subnet}")
    cleanup.append(("network", "rm", f"tenant{subnet}"))
    error = docker_error(rig, "run", "--rm", "--network", f"tenant{subnet}", IMAGE, "true")
    assert "has no global address to adopt" in error
    # Once the host's DHCP client (here: the test) gives it one, it works.
    host(rig, "addr", "add", f"10.78.{subnet}.10/24", "dev", nic.name)
    run_container(rig, cleanup, f"a{subnet}", "--network", f"tenant{subnet}")
    assert f"inet 10.78.{subnet}.10/24" in exec_in(rig, f"a{subnet}", "ip", "-4", "addr")
    ping(rig, f"a{subnet}", f"10.78.{subnet}.1")


@BOTH_MODES
def test_a_nic_comes_back_with_everything_it_had(rig: Rig, cleanup: list, subnet: int) -> None:
    segment = rig.segment(f"10.77.{subnet}.1/24")
    nic = segment.add_nic(f"hn{subnet}a", mtu=1400)
    name = nic.name
    host(rig, "link", "set", name, "txqueuelen", "500", "group", "7", "alias", "tenant uplink")
    host(rig, "link", "property", "add", "dev", name, "altname", f"tenant{subnet}")
    run(*rig.inside("sh", "-c", f"echo 2 > /proc/sys/net/ipv4/conf/{name}/rp_filter && "
                                f"echo 1 > /proc/sys/net/ipv4/conf/{name}/arp_ignore && "
                                f"echo 0 > /proc/sys/net/ipv6/conf/{name}/accept_ra && "
                                f"echo 1 > /proc/sys/net/ipv4/conf/{name}/forwarding"))
    host(rig, "addr", "add", f"10.88.{subnet}.5/24", "dev", name, "label", f"{name}:p")
    host(rig, "addr", "add", f"10.88.{subnet}.6/24", "dev", name)  # a secondary
    host(rig, "addr", "add", f"10.89.{subnet}.5/24", "dev", name, "noprefixroute")
    host(rig, "addr", "add", f"10.87.{subnet}.5/24", "dev", name, "valid_lft", "3600",
         "preferred_lft", "1800")
    host(rig, "-6", "addr", "add", f"fd88:{subnet}::5/64", "dev", name, "nodad")
    host(rig, "route", "add", f"10.66.{subnet}.0/24", "via", f"10.88.{subnet}.1", "metric", "50",
         "proto", "static")
    host(rig, "route", "add", "default", "via", f"10.88.{subnet}.1", "dev", name, "table", "100")
    host(rig, "route", "add", f"10.65.{subnet}.0/24", "dev", name, "scope", "link",
         "src", f"10.88.{subnet}.5", "table", "100")
    host(rig, "-6", "route", "add", f"fd65:{subnet}::/64", "via", f"fd88:{subnet}::1",
         "dev", name, "metric", "7")
    before = full_snapshot(rig, nic)
    assert len(before["routes"]) == 4 and "ipv4/rp_filter:2" in before["sysctls"]

    rig.docker("network", "create", "-d", rig.driver, "-o", f"hostnic_mac={nic.mac}",
               "--subnet", f"10.77.{subnet}.0/24", "--gateway", f"10.77.{subnet}.1",
               f"net{subnet}")
    cleanup.append(("network", "rm", f"net{subnet}"))
    run_container(rig, cleanup, f"c{subnet}", "--network", f"net{subnet}")
    ping(rig, f"c{subnet}", f"10.77.{subnet}.1")
    rig.docker("rm", "-f", f"c{subnet}")
    after = full_snapshot(rig, nic)
    for key in before:
        assert after[key] == before[key], key


def test_a_bridge_port_and_a_nic_with_a_device_on_top_are_refused(
        rig: Rig, cleanup: list, links: list[str], subnet: int) -> None:
    segment = rig.segment(f"10.77.{subnet}.1/24")
    port, lower = segment.add_nic(f"hn{subnet}a"), segment.add_nic(f"hn{subnet}b")
    host(rig, "link", "add", f"br{subnet}", "type", "bridge")
    links.append(f"br{subnet}")
    host(rig, "link", "set", port.name, "master", f"br{subnet}")
    error = docker_error(rig, "network", "create", "-d", rig.driver,
                         "-o", f"hostnic_mac={port.mac}", f"net{subnet}")
    cleanup.append(("network", "rm", f"net{subnet}"))
    assert f"is a port of bridge br{subnet}; lending it would cut br{subnet} off" in error
    # No VLAN support in this kernel: a macvlan on top stands for one.
    host(rig, "link", "add", f"mv{subnet}", "link", lower.name, "type", "macvlan")
    links.append(f"mv{subnet}")
    error = docker_error(rig, "network", "create", "-d", rig.driver,
                         "-o", f"hostnic_mac={lower.mac}", f"net{subnet}")
    assert f"carries macvlan mv{subnet}; lending it would cut them off" in error
    # A device put on top after the network was made is seen at the lend.
    host(rig, "link", "del", f"mv{subnet}")
    rig.docker("network", "create", "-d", rig.driver, "-o", f"hostnic_mac={lower.mac}",
               "--subnet", f"10.77.{subnet}.0/24", f"net{subnet}")
    host(rig, "link", "add", f"mv{subnet}", "link", lower.name, "type", "macvlan")
    error = docker_error(rig, "run", "--rm", "--network", f"net{subnet}", IMAGE, "true")
    assert f"carries macvlan mv{subnet}" in error
    assert rig.host_link(lower.name) is not None  # untouched, still home
