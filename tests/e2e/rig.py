"""A private Docker engine with hostnic beside it, in namespaces of its own.

dockerd, its containerd and the plugin share one network namespace and one
private mount namespace (a ``holder`` process keeps them alive), so the
machine's own NICs, /run/docker and /etc/docker are never touched. We enter
with ``nsenter`` + ``unshare --mount`` rather than ``ip netns exec``: the latter
remounts /sys, hiding the cgroup v1 tree, and dockerd then refuses to start.

"Host NICs" are veth ends in dockerd's namespace; their peers sit on a bridge
in a segment namespace that holds the gateway, so pings prove traffic flows.
With ``managed=True`` hostnic runs as a managed (v2) Docker plugin built by
scripts/build-plugin, created and enabled in the private dockerd, its state
directory moved into the rig's work dir (``docker plugin set``).

Everything is removed by ``close()``: processes (only ours, found by mount
namespace, or by network namespace for a managed plugin, which has a mount
namespace of its own), namespaces, links and directories.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Iterator

import attrs

DOCKER = "/usr/bin/docker"
DOCKERD = "/usr/sbin/dockerd"
IMAGE = "hostnic-test:busybox"
TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")

HOLDER_SCRIPT = r"""
set -e
work="$1"
mkdir -p "$work/cgroup" "$work/etc-docker"
mount --rbind /sys/fs/cgroup "$work/cgroup"
mount -t sysfs sysfs /sys
mount --move "$work/cgroup" /sys/fs/cgroup
mount -t tmpfs -o mode=755 tmpfs /run
mkdir -p /run/docker/plugins /run/hostnic
# What the README's tmpfiles.d line makes at boot (a managed plugin mounts it).
mkdir -p /run/docker/netns
mount --bind "$work/etc-docker" /etc/docker
touch "$work/holder.ready"
exec sleep 86400
"""


_rigs = itertools.count(1)


class RigError(Exception):
    pass


def run(*cmd: str, check: bool = True, timeout: float = 120, input: str | None = None
        ) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, input=input)
    if check and result.returncode != 0:
        raise RigError(f"{' '.join(cmd)} exited {result.returncode}: "
                       f"{result.stderr.strip() or result.stdout.strip()}")
    return result


def wait_for(predicate, timeout: float, what: str, interval: float = 0.1):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise RigError(f"timed out after {timeout:.0f}s waiting for {what}")


@attrs.define
class Nic:
    name: str
    mac: str
    segment: "Segment"


@attrs.define
class Segment:
    """An L2 segment outside the host: a namespace with a bridge and a gateway."""

    rig: "Rig"
    netns: str
    gateway4: str | None
    gateway6: str | None

    def add_nic(self, name: str, mtu: int = 1500, addresses: tuple[str, ...] = (),
                up: bool = True) -> Nic:
        peer = f"p{self.rig.serial()}"
        run("ip", "link", "add", name, "netns", self.rig.netns, "mtu", str(mtu),
            "type", "veth", "peer", "name", peer, "netns", self.netns, "mtu", str(mtu))
        run("ip", "-n", self.netns, "link", "set", peer, "master", "br0", "up")
        for address in addresses:
            run("ip", "-n", self.rig.netns, "addr", "add", address, "dev", name)
        if up:
            run("ip", "-n", self.rig.netns, "link", "set", name, "up")
        mac = run("ip", "-n", self.rig.netns, "-br", "link", "show", name).stdout.split()[2]
        return Nic(name=name, mac=mac, segment=self)


@attrs.define
class Rig:
    work: str = attrs.field(factory=lambda: tempfile.mkdtemp(prefix="hostnic-e2e-"))
    netns: str = attrs.field(factory=lambda: f"hne2e{os.getpid()}x{next(_rigs)}")
    holder: subprocess.Popen[bytes] | None = None
    plugin: subprocess.Popen[bytes] | None = None
    dockerd: subprocess.Popen[bytes] | None = None
    segments: list[str] = attrs.field(factory=list)
    managed: bool = False
    plugin_dir: str | None = None  # scripts/build-plugin's output, when managed
    # The engine under test: Debian 12's, or another (scripts/fetch-engine).
    dockerd_binary: str = attrs.field(
        factory=lambda: os.environ.get("HOSTNIC_E2E_DOCKERD") or DOCKERD)
    _serials: Iterator[int] = attrs.field(factory=lambda: itertools.count(1))

    def serial(self) -> int:
        return next(self._serials)

    @property
    def driver(self) -> str:
        """What ``docker network create -d`` takes: a managed plugin's name
        resolves only with its tag."""
        return "hostnic:latest" if self.managed else "hostnic"

    @property
    def docker_sock(self) -> str:
        return os.path.join(self.work, "docker.sock")

    @property
    def state_dir(self) -> str:
        return os.path.join(self.work, "hostnic-state")

    # -- bring-up ----------------------------------------------------------

    def start(self, plugin: bool = True) -> None:
        self.start_holder(HOLDER_SCRIPT)
        self.start_dockerd()
        self.build_image()
        if plugin:
            self.start_plugin()

    def start_holder(self, holder_script: str) -> None:
        """The rig's network namespace, and the process that keeps it and the
        private mount namespace ``holder_script`` sets up alive."""
        run("ip", "netns", "add", self.netns)
        run("ip", "-n", self.netns, "link", "set", "lo", "up")
        script = os.path.join(self.work, "holder.sh")
        with open(script, "w") as f:
            f.write(holder_script)
        self.holder = subprocess.Popen(
            ["nsenter", f"--net=/run/netns/{self.netns}", "unshare", "--mount",
             "--propagation", "slave", "sh", script, self.work],
            stdout=open(os.path.join(self.work, "holder.log"), "wb"), stderr=subprocess.STDOUT)
        wait_for(lambda: os.path.exists(os.path.join(self.work, "holder.ready"))
                 or self.holder.poll() is not None, 20, "the namespace holder")  # type: ignore[union-attr]
        if self.holder.poll() is not None:
            raise RigError("namespace holder failed: " + self.log("holder.log"))

    def inside(self, *cmd: str) -> list[str]:
        """A command line that runs in dockerd's network and mount namespace."""
        assert self.holder is not None
        return ["nsenter", "-t", str(self.holder.pid), "-m", "-n", "--", *cmd]

    def _spawn(self, log: str, *cmd: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen(self.inside(*cmd), stdin=subprocess.DEVNULL,
                                stdout=open(os.path.join(self.work, log), "ab"),
                                stderr=subprocess.STDOUT, start_new_session=True)

    def start_dockerd(self) -> None:
        self.dockerd = self._spawn(
            "dockerd.log", "env", "DOCKER_SERVICE_PREFER_OFFLINE_IMAGE=1", self.dockerd_binary, "--iptables=false", "--ip6tables=false", "--bridge=none",
            "--data-root", os.path.join(self.work, "docker-data"),
            # dockerd's default, in our private /run: a managed plugin finds
            # the namespaces there, as on a real host.
            "--exec-root", "/run/docker",
            "-H", f"unix://{self.docker_sock}",
            "--pidfile", os.path.join(self.work, "docker.pid"))
        wait_for(lambda: self.dockerd.poll() is not None or run(  # type: ignore[union-attr]
            DOCKER, "-H", f"unix://{self.docker_sock}", "version", check=False,
            timeout=10).returncode == 0, 60, "dockerd", interval=0.5)
        if self.dockerd.poll() is not None:
            raise RigError("dockerd exited: " + self.log("dockerd.log")[-2000:])

    def stop_dockerd(self, sig: int = signal.SIGTERM) -> None:
        assert self.dockerd is not None
        self.dockerd.send_signal(sig)
        try:
            self.dockerd.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.dockerd.kill()
            self.dockerd.wait(timeout=10)

    def start_plugin(self, state_dir: str | None = None, crash_at: str | None = None,
                     wait: bool = True) -> None:
        """As a user does: twistd from the installed package. ``crash_at``
        arms a crash point (hostnic/core/crashpoints.py) in this process only. A
        managed plugin is created and enabled once; after that dockerd
        itself starts it again whenever it dies: wait for that."""
        if self.managed:
            assert state_dir is None and crash_at is None, "legacy-mode only"
            enabled = self.docker("plugin", "inspect", "-f", "{{.Enabled}}", "hostnic",
                                  check=False)
            if enabled.returncode != 0:
                self.install_managed_plugin()
            elif enabled.stdout.strip() != "true":
                self.docker("plugin", "enable", "hostnic", timeout=120)
            self.wait_managed_plugin()
            return
        command = ["env", f"HOSTNIC_CRASH_AT={crash_at}"] if crash_at else []
        self.plugin = self._spawn(
            "plugin.log", *command, TWISTD, "-n", "--pidfile=", "hostnic",
            "--socket", "unix:/run/docker/plugins/hostnic.sock:mode=660:lockfile=1",
            "--state-dir", state_dir or self.state_dir)
        if not wait:
            return
        wait_for(lambda: self.plugin.poll() is not None or run(  # type: ignore[union-attr]
            *self.inside("sh", "-c", "test -S /run/docker/plugins/hostnic.sock"),
            check=False).returncode == 0, 30, "the hostnic socket")
        if self.plugin.poll() is not None:
            raise RigError("hostnic exited: " + self.log("plugin.log")[-2000:])

    @contextlib.contextmanager
    def supervised_plugin(self, state_dir: str | None = None,
                          crash_at: str | None = None) -> Iterator[list[int]]:
        """Run the plugin as systemd's Restart= would: started again at once
        whenever it dies (the first one with ``crash_at`` armed). Yields the
        list of exit codes seen; afterwards the rig's usual plugin is back."""
        self.kill_plugin(signal.SIGTERM)
        exits: list[int] = []
        stop = threading.Event()
        self.start_plugin(state_dir, crash_at)

        def watch() -> None:
            while not stop.is_set():
                assert self.plugin is not None
                if self.plugin.poll() is not None:
                    exits.append(self.plugin.returncode)
                    self.start_plugin(state_dir, wait=False)
                time.sleep(0.02)

        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            yield exits
        finally:
            stop.set()
            watcher.join()
            self.kill_plugin(signal.SIGTERM)
            self.start_plugin()

    def kill_plugin(self, sig: int = signal.SIGKILL) -> None:
        if self.managed:
            pid = self.managed_plugin_pid()
            assert pid is not None, "the managed plugin is not running"
            os.kill(pid, sig)
            wait_for(lambda: not os.path.exists(f"/proc/{pid}"), 30, "the plugin to die")
            return
        assert self.plugin is not None
        self.plugin.send_signal(sig)
        self.plugin.wait(timeout=30)

    # -- managed plugin --------------------------------------------------------

    def install_managed_plugin(self) -> None:
        """As the README says a user does, but the state dir in the rig."""
        assert self.plugin_dir is not None, "a managed rig needs scripts/build-plugin's output"
        os.makedirs(self.state_dir, exist_ok=True)
        self.docker("plugin", "create", "hostnic", self.plugin_dir, timeout=600)
        self.docker("plugin", "set", "hostnic", f"state.source={self.state_dir}")
        self.docker("plugin", "enable", "hostnic", timeout=120)

    def managed_plugin_pid(self) -> int | None:
        """The plugin's twistd: in our network namespace (host networking),
        in a mount namespace of its own."""
        for pid in self._pids_in_our_netns():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if b"/opt/venvs/hostnic/bin/twistd" in f.read():
                        return pid
            except OSError:
                pass
        return None

    def wait_managed_plugin(self) -> int:
        """Until the plugin answers on its admin socket (hostnic-ctl status)."""
        ctl = os.path.join(os.path.dirname(sys.executable), "hostnic-ctl")
        wait_for(lambda: self.managed_plugin_pid() is not None and run(
            *self.inside(ctl, "status"), check=False, timeout=10).returncode == 0,
            60, "the managed plugin to serve", interval=0.2)
        pid = self.managed_plugin_pid()
        assert pid is not None
        return pid

    def build_image(self) -> None:
        rootfs = os.path.join(self.work, "rootfs")
        os.makedirs(os.path.join(rootfs, "bin"))
        shutil.copy("/bin/busybox", os.path.join(rootfs, "bin", "busybox"))
        for applet in run("/bin/busybox", "--list").stdout.split():
            if applet != "busybox":
                os.symlink("busybox", os.path.join(rootfs, "bin", applet))
        tar = subprocess.run(["tar", "-C", rootfs, "-c", "."], capture_output=True, check=True)
        subprocess.run([DOCKER, "-H", f"unix://{self.docker_sock}", "import", "-", IMAGE],
                       input=tar.stdout, capture_output=True, check=True, timeout=60)

    # -- use ---------------------------------------------------------------

    def docker(self, *args: str, check: bool = True, timeout: float = 120
               ) -> subprocess.CompletedProcess[str]:
        return run(DOCKER, "-H", f"unix://{self.docker_sock}", *args, check=check,
                   timeout=timeout)

    def segment(self, gateway4: str | None = None, gateway6: str | None = None) -> Segment:
        """A new segment; gateways in CIDR form (``192.168.10.1/24``)."""
        netns = f"{self.netns}s{self.serial()}"
        run("ip", "netns", "add", netns)
        self.segments.append(netns)
        run("ip", "-n", netns, "link", "set", "lo", "up")
        run("ip", "-n", netns, "link", "add", "br0", "type", "bridge")
        for gateway in (gateway4, gateway6):
            if gateway:
                run("ip", "-n", netns, "addr", "add", gateway, "dev", "br0", "nodad")
        run("ip", "-n", netns, "link", "set", "br0", "up")
        return Segment(self, netns, gateway4 and gateway4.split("/")[0],
                       gateway6 and gateway6.split("/")[0])

    def host_link(self, name: str) -> dict[str, object] | None:
        """A link of dockerd's namespace as ``ip -j`` shows it, or None."""
        import json
        result = run("ip", "-n", self.netns, "-j", "addr", "show", "dev", name, check=False)
        if result.returncode != 0:
            return None
        links: list[dict[str, object]] = json.loads(result.stdout)
        return links[0] if links else None

    def host_link_by_mac(self, mac: str) -> dict[str, object] | None:
        import json
        links = json.loads(run("ip", "-n", self.netns, "-j", "addr", "show").stdout)
        return next((l for l in links if l.get("address") == mac), None)

    def log(self, name: str) -> str:
        try:
            with open(os.path.join(self.work, name), errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    # -- tear-down ---------------------------------------------------------

    @staticmethod
    def _pids_in(namespace: str, kind: str) -> list[int]:
        """Processes in the namespace ``namespace`` (a path: /run/netns/X,
        /proc/PID/ns/mnt) of ``kind`` (net, mnt)."""
        try:
            ours = os.stat(namespace).st_ino
        except OSError:
            return []
        pids = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    if os.stat(f"/proc/{entry}/ns/{kind}").st_ino == ours:
                        pids.append(int(entry))
                except OSError:
                    pass
        return pids

    def _pids_in_our_netns(self) -> list[int]:
        return self._pids_in(f"/run/netns/{self.netns}", "net")

    def _our_pids(self) -> list[int]:
        if self.holder is None:
            return []
        return [pid for pid in self._pids_in(f"/proc/{self.holder.pid}/ns/mnt", "mnt")
                if pid != self.holder.pid]

    def close(self) -> None:
        if self.dockerd is not None and self.dockerd.poll() is None:
            # A swarm's services would start their tasks again.
            self.docker("swarm", "leave", "--force", check=False)
            containers = self.docker("ps", "-aq", check=False).stdout.split()
            if containers:
                self.docker("rm", "-f", *containers, check=False)
            self.stop_dockerd()
        if self.plugin is not None and self.plugin.poll() is None:
            self.plugin.terminate()
            try:
                self.plugin.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.plugin.kill()
        # Anything still in our mount namespace is ours (containerd, shims),
        # and a managed plugin in our network namespace.
        for _ in range(50):
            plugin = self.managed_plugin_pid() if self.managed else None
            pids = self._our_pids() + ([plugin] if plugin else [])
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.1)
        if self.holder is not None and self.holder.poll() is None:
            self.holder.kill()
            self.holder.wait(timeout=10)
        for netns in [*self.segments, self.netns]:
            run("ip", "netns", "del", netns, check=False)
        keep = os.environ.get("HOSTNIC_E2E_KEEP_LOGS")  # a directory, to read them later
        if keep:
            os.makedirs(keep, exist_ok=True)
            for name in os.listdir(self.work):
                if name.endswith(".log"):
                    shutil.copy(os.path.join(self.work, name),
                                os.path.join(keep, f"{self.netns}-{name}"))
        shutil.rmtree(self.work, ignore_errors=True)
