"""The .deb as a user gets it: build, lintian, dpkg -i, the installed units'
ExecStart socket-activated against a real dockerd (stopped and re-activated
twice), then dpkg -r and dpkg -P leave exactly what they should."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

from tests.e2e.rig import IMAGE, Rig, run

pytestmark = pytest.mark.deb
ROOT = Path(__file__).resolve().parents[2]
UNITS = Path("/lib/systemd/system")
SOCKET_PATH = "/run/docker/plugins/hostnic.sock"
LEFT_BEHIND = ["/opt/venvs/hostnic", "/usr/bin/hostnic-ctl", "/usr/lib/cni/hostnic",
               "/opt/cni/bin/hostnic", "/etc/default/hostnic",
               "/lib/systemd/system/hostnic.service", "/lib/systemd/system/hostnic.socket",
               "/etc/systemd/system/sockets.target.wants/hostnic.socket",
               "/etc/systemd/system/multi-user.target.wants/hostnic.service",
               "/var/lib/hostnic", "/usr/share/doc/hostnic"]


def pending_connections(rig: Rig, path: str) -> int:
    """Connections waiting on a listening unix socket (its accept queue)."""
    for line in run(*rig.inside("ss", "-xlnH")).stdout.splitlines():
        fields = line.split()  # u_str LISTEN <queued> <backlog> <path> ...
        if len(fields) > 4 and fields[4] == path:
            return int(fields[2])
    return 0


def unit_value(unit: str, key: str) -> str:
    for line in (UNITS / unit).read_text().splitlines():
        if line.startswith(f"{key}="):
            return line.split("=", 1)[1]
    raise AssertionError(f"{unit} has no {key}=")


@pytest.fixture(scope="module")
def deb(built_deb: Path) -> Path:
    return built_deb  # tests/conftest.py: built once, the managed plugin uses it too


@pytest.fixture(scope="module")
def installed(deb: Path) -> Iterator[Path]:
    run("dpkg", "-i", str(deb))
    yield deb
    run("dpkg", "-P", "hostnic", check=False)


def test_lintian_reports_no_errors(deb: Path) -> None:
    with tempfile.TemporaryDirectory() as scratch:  # lintian leaves files in TMPDIR
        result = subprocess.run(["lintian", str(deb)], capture_output=True, text=True,
                                timeout=300, env={**os.environ, "TMPDIR": scratch})
    print(f"\nlintian: {result.stdout.strip() or '(no tags)'}")
    assert result.returncode == 0
    assert not [l for l in result.stdout.splitlines() if l.startswith("E:")]


def test_package_metadata_and_contents(deb: Path) -> None:
    depends = run("dpkg-deb", "-f", str(deb), "Depends").stdout.strip()
    assert {d.split()[0] for d in depends.split(", ")} == {"libc6", "python3.11"}
    listing = run("dpkg-deb", "-c", str(deb)).stdout
    assert "dropin.cache" not in listing
    assert "./usr/bin/hostnic-ctl -> /opt/venvs/hostnic/bin/hostnic-ctl" in listing
    # The CNI plugin where Debian's podman looks, and where containerd and
    # Kubernetes look.
    assert "./usr/lib/cni/hostnic -> /opt/venvs/hostnic/bin/hostnic-cni" in listing
    # (within /opt, dh_link makes the link relative, as policy asks)
    assert "./opt/cni/bin/hostnic -> ../../venvs/hostnic/bin/hostnic-cni" in listing
    with tempfile.TemporaryDirectory() as control:
        run("dpkg-deb", "-e", str(deb), control)
        assert Path(control, "conffiles").read_text().split() == ["/etc/default/hostnic"]


def test_installed_units(installed: Path) -> None:
    run("systemd-analyze", "verify", str(UNITS / "hostnic.socket"), str(UNITS / "hostnic.service"))
    assert unit_value("hostnic.socket", "ListenStream") == SOCKET_PATH
    assert unit_value("hostnic.socket", "SocketMode") == "0660"
    assert unit_value("hostnic.service", "Type") == "notify"
    assert "docker.service" in unit_value("hostnic.service", "Before")
    # A restart of the service keeps the socket (no PartOf=), so requests wait.
    assert "PartOf=" not in (UNITS / "hostnic.socket").read_text().replace("# No PartOf=", "")
    assert int(unit_value("hostnic.service", "WatchdogSec")) > 0
    assert int(unit_value("hostnic.service", "LimitNOFILE")) >= 4096
    assert unit_value("hostnic.service", "ProtectSystem") == "strict"
    assert unit_value("hostnic.service", "CapabilityBoundingSet") == "CAP_NET_ADMIN"
    assert Path("/etc/systemd/system/sockets.target.wants/hostnic.socket").is_symlink()
    # Built by postinst, never shipped.
    assert Path("/opt/venvs/hostnic/lib/python3.11/site-packages/twisted/plugins/dropin.cache").exists()
    assert run("/usr/bin/hostnic-ctl", "--help").returncode == 0
    for plugin in ("/usr/lib/cni/hostnic", "/opt/cni/bin/hostnic"):
        version = subprocess.run([plugin], input=b'{"cniVersion": "1.0.0"}', capture_output=True,
                                 env={"CNI_COMMAND": "VERSION"}, timeout=30)
        assert json.loads(version.stdout)["supportedVersions"] == ["0.4.0", "1.0.0", "1.1.0"]


def test_socket_activated_service_serves_dockerd(installed: Path) -> None:
    rig = Rig()
    activator: subprocess.Popen[str] | None = None
    try:
        rig.start(plugin=False)
        state = os.path.join(rig.work, "state")
        fdname = unit_value("hostnic.socket", "FileDescriptorName")
        # The installed ExecStart, with the unit's own $HOSTNIC_OPTS hook
        # keeping state out of the machine's /var/lib/hostnic.
        command = [state if word == "$HOSTNIC_OPTS" else word
                   for word in shlex.split(unit_value("hostnic.service", "ExecStart"))]
        command[command.index(state):command.index(state) + 1] = ["--state-dir", state]

        # First activation by systemd-socket-activate itself. It makes the
        # socket 0644 whatever the umask (it has no SocketMode=); hostnic must
        # leave that alone (unpatched Twisted makes it 0666).
        first = subprocess.Popen(rig.inside(
            "systemd-socket-activate", "-l", SOCKET_PATH, f"--fdname={fdname}", *command),
            stdout=open(os.path.join(rig.work, "activate.log"), "ab"), stderr=subprocess.STDOUT)
        segment = rig.segment("10.66.1.1/24")
        nic = segment.add_nic("hnpkg0", addresses=("10.67.1.5/24",))
        rig.docker("network", "create", "-d", "hostnic", "-o", f"hostnic_mac={nic.mac}",
                   "--subnet", "10.66.1.0/24", "--gateway", "10.66.1.1", "pkgnet", timeout=120)
        rig.docker("run", "-d", "--name", "pkg1", "--network", "pkgnet", IMAGE, "sleep", "600")
        assert rig.docker("exec", "pkg1", "ping", "-c", "1", "-W", "2", "10.66.1.1").returncode == 0
        rig.docker("stop", "-t", "1", "pkg1")
        rig.docker("rm", "pkg1")
        assert rig.host_link("hnpkg0") is not None
        first.send_signal(signal.SIGTERM)
        first.wait(timeout=60)
        mode = run(*rig.inside("stat", "-c", "%a %F", SOCKET_PATH)).stdout.split(None, 1)
        assert mode == ["644", "socket\n"], "the socket must outlive the service, mode intact"

        # Then as systemd does on every later start: it holds the socket.
        # WatchdogSec= in microseconds, shortened so a few pings come in each round.
        watchdog_usec = str(min(int(unit_value("hostnic.service", "WatchdogSec")), 2) * 1_000_000)
        activator = subprocess.Popen(
            rig.inside(sys.executable, str(Path(__file__).with_name("activator.py")),
                       SOCKET_PATH, "660", fdname, watchdog_usec, "--", *command),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

        def say(word: str) -> str:
            assert activator is not None and activator.stdin and activator.stdout
            activator.stdin.write(word + "\n")
            activator.stdin.flush()
            return activator.stdout.readline().strip()

        cold_starts = []
        for round_ in range(2):
            # dockerd asks while hostnic is down: the request waits on the socket.
            waiting = threading.Thread(target=lambda: rig.docker(
                "run", "--rm", "--network", "pkgnet", IMAGE, "ping", "-c", "1", "-W", "2",
                "10.66.1.1"))
            if round_:
                waiting.start()
                # Until dockerd's call is queued on the socket nobody serves.
                deadline = time.monotonic() + 120
                while not pending_connections(rig, SOCKET_PATH):
                    assert waiting.is_alive() and time.monotonic() < deadline, \
                        "dockerd never asked the stopped plugin"
                    time.sleep(0.05)
            ready = say("start")
            assert ready.startswith("ready"), ready
            cold_starts.append(float(ready.split()[1]))
            if round_:
                waiting.join(timeout=120)
                assert not waiting.is_alive()
            rig.docker("run", "--rm", "--network", "pkgnet", IMAGE, "true")
            assert run(*rig.inside("/usr/bin/hostnic-ctl", "status")).returncode == 0
            stopped = say("stop").split()
            assert stopped[0] == "stopped"
            assert int(stopped[2]) >= 1, f"the reactor feeds systemd's watchdog: {ready} {stopped}"
            mode = run(*rig.inside("stat", "-c", "%a", SOCKET_PATH)).stdout.strip()
            assert mode == "660"
        print(f"\nsocket activation to READY=1: {', '.join(f'{s:.2f}s' for s in cold_starts)}")
        say("start")
        rig.docker("network", "rm", "pkgnet")
        say("stop")
    finally:
        if activator is not None and activator.poll() is None:
            activator.stdin.write("quit\n")  # type: ignore[union-attr]
            activator.stdin.flush()  # type: ignore[union-attr]
            activator.wait(timeout=30)
        rig.close()


def test_remove_keeps_state_and_purge_leaves_nothing(installed: Path) -> None:
    os.makedirs("/var/lib/hostnic", exist_ok=True)
    Path("/var/lib/hostnic/state.json").write_text('{"version": 1}')
    run("dpkg", "-r", "hostnic")
    assert Path("/var/lib/hostnic/state.json").exists()
    assert Path("/etc/default/hostnic").exists()  # a conffile, kept until purge
    assert not Path("/opt/venvs/hostnic").exists()
    run("dpkg", "-P", "hostnic")
    assert [p for p in LEFT_BEHIND if os.path.lexists(p)] == []
    assert "hostnic" not in run("dpkg", "-l").stdout.split()
