"""Exactly-once lending as dockerd exercises it: hostnic dies in the middle of
a call and dockerd retries it against the restarted plugin (a retry that,
from dockerd 20.10 to 26, comes without its body); the state disk fills up
under `docker network create` and `docker run`."""

from __future__ import annotations

import json
import os
import signal
import sys
import tempfile

import pytest

from tests.e2e.rig import IMAGE, Rig, run
from tests.e2e.test_docker import (create_network, docker_error, links_in, ping, run_container,
                                   snapshot)

pytestmark = pytest.mark.e2e


def test_a_join_cut_short_after_its_record_fails_cleanly_and_can_be_run_again(
        rig: Rig, cleanup: list, subnet: int) -> None:
    segment = rig.segment(f"10.77.{subnet}.1/24")
    nic = segment.add_nic(f"hn{subnet}a", addresses=(f"10.95.{subnet}.5/24",))
    before = snapshot(rig, nic)
    create_network(rig, cleanup, f"net{subnet}", subnet, "-o", f"hostnic_mac={nic.mac}")
    with rig.supervised_plugin(crash_at="join.recorded") as exits:
        # dockerd resends the Join to the restarted plugin, but without its
        # body: hostnic cannot tell which endpoint it meant, and says so.
        error = docker_error(rig, "run", "-d", "--name", f"c{subnet}", "--network",
                             f"net{subnet}", IMAGE, "sleep", "600")
        cleanup.append(("rm", "-f", f"c{subnet}"))
        assert exits == [-signal.SIGKILL]  # it died between the record and the rename
        assert "NetworkDriver.Join came without its body" in error
        assert "run the docker command again" in error
        # dockerd's clean-up of the failed start gave the recorded NIC back.
        assert snapshot(rig, nic) == before
        rig.docker("rm", "-f", f"c{subnet}")
        run_container(rig, cleanup, f"c{subnet}", "--network", f"net{subnet}")
        assert links_in(rig, f"c{subnet}")[1]["mac"] == nic.mac
        ping(rig, f"c{subnet}", f"10.77.{subnet}.1")
        rig.docker("rm", "-f", f"c{subnet}")
        assert snapshot(rig, nic) == before


def test_a_network_whose_create_was_cut_short_can_be_removed_by_the_operator(
        rig: Rig, cleanup: list, subnet: int) -> None:
    segment = rig.segment(f"10.77.{subnet}.1/24")
    nic = segment.add_nic(f"hn{subnet}a")
    ctl = os.path.join(os.path.dirname(sys.executable), "hostnic-ctl")
    with rig.supervised_plugin(crash_at="network.recorded") as exits:
        error = docker_error(rig, "network", "create", "-d", rig.driver,
                             "-o", f"hostnic_mac={nic.mac}", "--subnet",
                             f"10.77.{subnet}.0/24", f"net{subnet}")
        cleanup.append(("network", "rm", f"net{subnet}"))
        assert exits == [-signal.SIGKILL]  # recorded, then died before answering
        assert "NetworkDriver.CreateNetwork came without its body" in error
        # dockerd believes the create failed; hostnic holds a network nobody
        # will delete, and the operator sees and removes it.
        [orphan] = json.loads(run(*rig.inside(ctl, "--json", "networks")).stdout)
        assert orphan["pool"][0]["mac"] == nic.mac
        assert "already in hostnic network" in docker_error(
            rig, "network", "create", "-d", rig.driver, "-o", f"hostnic_mac={nic.mac}",
            "--subnet", f"10.77.{subnet}.0/24", f"net{subnet}")
        removed = run(*rig.inside(ctl, "network-rm", orphan["id"][:12])).stdout
        assert f"free again: {nic.mac}" in removed
        create_network(rig, cleanup, f"net{subnet}", subnet, "-o", f"hostnic_mac={nic.mac}")
        run_container(rig, cleanup, f"c{subnet}", "--network", f"net{subnet}")
        ping(rig, f"c{subnet}", f"10.77.{subnet}.1")
        rig.docker("rm", "-f", f"c{subnet}")
        rig.docker("network", "rm", f"net{subnet}")


def test_a_full_state_disk_refuses_network_create_and_loses_nothing(
        rig: Rig, cleanup: list, subnet: int) -> None:
    segment = rig.segment(f"10.77.{subnet}.1/24")
    nics = [segment.add_nic(f"hn{subnet}{chr(97 + i)}") for i in range(16)]
    state = tempfile.mkdtemp(prefix="hostnic-full-", dir=rig.work)
    # dockerd and the plugin have a mount namespace of their own: mount there.
    run(*rig.inside("mount", "-t", "tmpfs", "-o", "size=16k", "hostnic-e2e", state))

    def state_file() -> str:
        """Every file of the state directory, as the plugin's namespace sees it."""
        return run(*rig.inside("sh", "-c", f"cd {state} && for f in state.json journal.*; "
                                           f"do [ -e \"$f\" ] && echo \"== $f\" && "
                                           f"od -An -c \"$f\"; done; true")).stdout

    try:
        with rig.supervised_plugin(state_dir=state) as exits:
            create_network(rig, cleanup, f"net{subnet}", subnet, "-o",
                           f"hostnic_mac={nics[0].mac}")
            run(*rig.inside("sh", "-c", f"cat /dev/zero > {state}/filler"), check=False)
            # The journal's last page takes a few more records, then one is
            # cut short by the full disk: that create is refused.
            error, made = "", 0
            for i, nic in enumerate(nics[1:], 1):
                before = state_file()
                result = rig.docker("network", "create", "-d", rig.driver,
                                    "-o", f"hostnic_mac={nic.mac}", f"full{subnet}x{i}",
                                    check=False)
                cleanup.append(("network", "rm", f"full{subnet}x{i}"))
                if result.returncode != 0:
                    error = result.stderr
                    break
                made += 1
            assert "could not save its state" in error and "No space left on device" in error
            assert state_file() == before  # whole, unchanged
            before_nic = snapshot(rig, nics[0])
            error = docker_error(rig, "run", "--rm", "--network", f"net{subnet}", IMAGE, "true")
            assert "could not save its state" in error
            assert snapshot(rig, nics[0]) == before_nic  # refused before it was touched
            run(*rig.inside("rm", f"{state}/filler"))
            run_container(rig, cleanup, f"c{subnet}", "--network", f"net{subnet}")
            ping(rig, f"c{subnet}", f"10.77.{subnet}.1")
            rig.docker("rm", "-f", f"c{subnet}")
            assert snapshot(rig, nics[0]) == before_nic
            for i in range(1, made + 1):
                rig.docker("network", "rm", f"full{subnet}x{i}")
            rig.docker("network", "rm", f"net{subnet}")
            assert exits == []
    finally:
        run(*rig.inside("umount", "-l", state), check=False)
