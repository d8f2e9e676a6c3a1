"""What only the managed plugin has: its life under `docker plugin`
(disable/enable, upgrade by re-creating it), and the one-hostnic-per-host
rule against a legacy hostnic started beside it."""

from __future__ import annotations

import os
from typing import Any, Iterator

import pytest

from tests.e2e.rig import TWISTD, Rig, run, wait_for
from tests.e2e.test_docker import container_with_a_lent_nic, ping, run_container, snapshot

pytestmark = pytest.mark.e2e


@pytest.fixture
def rig(managed_rig: Rig) -> Iterator[Rig]:
    yield managed_rig
    managed_rig.start_plugin()  # enabled again, whatever a failed test left


def claims(rig: Rig) -> list[dict[str, Any]]:
    import json
    ctl = os.path.join(os.path.dirname(TWISTD), "hostnic-ctl")
    listed: list[dict[str, Any]] = json.loads(run(*rig.inside(ctl, "--json", "endpoints")).stdout)
    return listed


def test_claims_survive_disable_enable_and_an_upgrade(rig: Rig, cleanup: list,
                                                      subnet: int) -> None:
    nic, before = container_with_a_lent_nic(rig, cleanup, subnet)
    [claim] = [c for c in claims(rig) if c["mac"] == nic.mac]

    # -f: dockerd refuses to disable a plugin its networks use, but its
    # count of users is not to be trusted across its own restarts (the
    # networks it restores at start do not count), so a user cannot rely
    # on either answer.
    rig.docker("plugin", "disable", "-f", "hostnic")
    assert rig.managed_plugin_pid() is None
    rig.docker("plugin", "enable", "hostnic")
    rig.wait_managed_plugin()
    assert [c for c in claims(rig) if c["mac"] == nic.mac] == [claim]
    ping(rig, f"c{subnet}", f"10.77.{subnet}.1")

    # The README's upgrade without a registry: a new plugin of the same name
    # from the new build, the same state directory.
    rig.docker("plugin", "disable", "-f", "hostnic")
    rig.docker("plugin", "rm", "-f", "hostnic")
    rig.install_managed_plugin()
    rig.wait_managed_plugin()
    assert [c for c in claims(rig) if c["mac"] == nic.mac] == [claim]

    rig.docker("stop", "-t", "1", f"c{subnet}")
    wait_for(lambda: rig.host_link_by_mac(nic.mac) is not None
             and snapshot(rig, nic) == before, 30, "the NIC to come home restored")
    assert [c for c in claims(rig) if c["mac"] == nic.mac] == []
    rig.docker("rm", f"c{subnet}")
    run_container(rig, cleanup, f"d{subnet}", "--network", f"net{subnet}")
    ping(rig, f"d{subnet}", f"10.77.{subnet}.1")


def test_a_legacy_hostnic_beside_the_plugin_refuses_to_start(rig: Rig, tmp_path: Any) -> None:
    """As a .deb's service would, on a host whose dockerd runs the plugin."""
    started = run(*rig.inside(
        TWISTD, "-n", "--pidfile=", "hostnic", "--socket", "unix:/run/legacy/hostnic.sock",
        "--admin", "unix:/run/legacy/admin.sock", "--state-dir", str(tmp_path / "state")),
        check=False, timeout=60)
    said = started.stdout + started.stderr
    assert started.returncode != 0
    assert ("hostnic cannot start: another hostnic already hands out this host's NICs: "
            "the managed Docker plugin hostnic (pid 1), driver socket "
            "unix:/run/docker/plugins/hostnic.sock") in said
    assert "Traceback" not in said
    assert not (tmp_path / "state").exists()
    rig.wait_managed_plugin()  # and the plugin serves on


SOCKETS_SEEN = r"""
import json, os, stat
found = []
for root, dirs, files in os.walk("/"):
    dirs[:] = [d for d in dirs if os.path.join(root, d) not in ("/proc", "/sys",
                                                               "/host/proc-sys-net")]
    for name in dirs + files:
        path = os.path.join(root, name)
        try:
            if stat.S_ISSOCK(os.lstat(path).st_mode):
                found.append(path)
        except OSError:
            pass
print(json.dumps(sorted(found)))
"""


def test_the_plugin_reaches_no_socket_but_its_own(rig: Rig) -> None:
    """A compromised hostnic must not be root on the node through Docker's or
    containerd's API: the plugin's file system holds no unix socket but the
    two it serves, and of the host's /run only dockerd's namespace files."""
    import json
    pid = rig.wait_managed_plugin()
    # As the plugin sees its file system (its mount namespace, its root).
    seen = json.loads(run("nsenter", "-t", str(pid), "-m", "--",
                          "/opt/venvs/hostnic/bin/python3", "-c", SOCKETS_SEEN).stdout)
    assert seen == ["/run/docker/plugins/hostnic-admin.sock",
                    "/run/docker/plugins/hostnic.sock"]
    with open(f"/proc/{pid}/mountinfo") as f:  # its mounts: the mount point is field 5
        mounts = f.read()
    under_run = sorted(line.split()[4] for line in mounts.splitlines()
                       if line.split()[4].startswith("/run"))
    assert under_run == ["/run/docker/netns", "/run/docker/plugins"], mounts
    # Abstract sockets belong to the network namespace, which host
    # networking shares: of those that accept connections (flag
    # __SO_ACCEPTCON, 0x10000), hostnic's own host lock is the only one.
    listening = set()
    for line in run(*rig.inside("cat", "/proc/net/unix")).stdout.splitlines()[1:]:
        fields = line.split()  # Num RefCount Protocol Flags Type St Inode [Path]
        if len(fields) == 8 and fields[7].startswith("@") and int(fields[3], 16) & 0x10000:
            listening.add(fields[7])
    assert listening == {"@hostnic/lends-this-host"}
