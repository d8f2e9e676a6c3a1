"""Private CNI runtimes (containerd with ``ctr run --cni``, podman with its CNI
backend) with hostnic beside them, in namespaces of their own.

As the Docker rig (tests/e2e/rig.py): one network namespace and one private
mount namespace kept alive by a holder process, "host NICs" that are veth
ends whose peers sit on a bridge in a segment namespace holding the gateway.
The runtimes read and write /etc/cni, /opt/cni, /var/lib/cni and
/var/lib/containers: in the rig those are overlays whose writes land in the
rig's work directory, so nothing of the machine's own is touched (the
directories need not exist on the machine). hostnic runs there as a user
runs it, with its default admin and CNI sockets in the rig's private /run.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from typing import Any

import attrs

from tests.e2e.rig import TWISTD, Rig, RigError, run, wait_for

SHIM = os.path.join(os.path.dirname(sys.executable), "hostnic-cni")
CTL = os.path.join(os.path.dirname(sys.executable), "hostnic-ctl")
PLUGINS = "/usr/lib/cni"  # Debian's containernetworking-plugins
CONTAINERD_SOCK = "/run/containerd/containerd.sock"
IMAGE_REF = "localhost/bb:latest"
NAMESPACE = "hostnic"  # containerd's namespace for the rig's images and tasks

HOLDER_SCRIPT = r"""
set -e
work="$1"
# Writes under these land in the rig's work directory.
for d in etc opt var/lib; do
    mkdir -p "$work/overlay/$d/upper" "$work/overlay/$d/work"
    mount -t overlay overlay \
        -o "lowerdir=/$d,upperdir=$work/overlay/$d/upper,workdir=$work/overlay/$d/work" "/$d"
done
mkdir -p "$work/cgroup"
mount --rbind /sys/fs/cgroup "$work/cgroup"
mount -t sysfs sysfs /sys
mount --move "$work/cgroup" /sys/fs/cgroup
mount -t tmpfs -o mode=755 tmpfs /run
mkdir -p /run/hostnic /run/netns /run/containerd /etc/cni/net.d /opt/cni/bin
touch "$work/holder.ready"
exec sleep 86400
"""


def oci_archive(rootfs_tar: bytes, ref: str) -> bytes:
    """An OCI image archive of one layer, named ``ref`` (ctr imports it)."""
    def blob(data: bytes) -> tuple[str, bytes]:
        return "sha256:" + hashlib.sha256(data).hexdigest(), data

    layer_digest, layer = blob(rootfs_tar)
    config_digest, config = blob(json.dumps({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["sh"], "Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]}}).encode())
    manifest_digest, manifest = blob(json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": layer_digest, "size": len(layer)}]}).encode())
    index = json.dumps({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": manifest_digest, "size": len(manifest),
        "annotations": {"io.containerd.image.name": ref,
                        "org.opencontainers.image.ref.name": ref.rsplit(":", 1)[1]}}]}).encode()
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        add("oci-layout", b'{"imageLayoutVersion": "1.0.0"}')
        add("index.json", index)
        for digest, data in ((layer_digest, layer), (config_digest, config),
                             (manifest_digest, manifest)):
            add(f"blobs/sha256/{digest.split(':')[1]}", data)
    return out.getvalue()


def busybox_rootfs() -> bytes:
    """A tar of a root with the static busybox and its applet links."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        info = tarfile.TarInfo("bin")
        info.type, info.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(info)
        tar.add("/bin/busybox", "bin/busybox")
        for applet in run("/bin/busybox", "--list").stdout.split():
            if applet != "busybox":
                link = tarfile.TarInfo(f"bin/{applet}")
                link.type, link.linkname = tarfile.SYMTYPE, "busybox"
                tar.addfile(link)
    return out.getvalue()


@attrs.define
class CNIRig(Rig):
    containerd: subprocess.Popen[bytes] | None = None

    def start(self, plugin: bool = True) -> None:
        self.start_holder(HOLDER_SCRIPT)
        # The CNI plugins where the runtimes look: hostnic's and Debian's IPAM.
        for name, target in (("hostnic", SHIM), ("static", f"{PLUGINS}/static"),
                             ("host-local", f"{PLUGINS}/host-local"),
                             ("host-device", f"{PLUGINS}/host-device")):
            self.sh(f"ln -sf {target} /opt/cni/bin/{name}")
        if plugin:
            self.start_hostnic()

    def sh(self, script: str, check: bool = True, timeout: float = 120,
           input: str | None = None) -> subprocess.CompletedProcess[str]:
        return run(*self.inside("sh", "-c", script), check=check, timeout=timeout, input=input)

    def start_hostnic(self) -> None:
        """As a user runs it: the admin and CNI sockets at their defaults."""
        self.plugin = self._spawn("plugin.log", TWISTD, "-n", "--pidfile=", "hostnic",
                                  "--socket", "unix:/run/hostnic/driver.sock",
                                  "--state-dir", self.state_dir)
        wait_for(lambda: self.plugin.poll() is not None or self.sh(  # type: ignore[union-attr]
            "test -S /run/hostnic/cni.sock", check=False).returncode == 0, 30, "hostnic")
        if self.plugin.poll() is not None:
            raise RigError("hostnic exited: " + self.log("plugin.log")[-2000:])

    def write(self, path: str, text: str) -> None:
        """A file in the rig's own view (its overlays)."""
        self.sh(f"cat > {path}", input=text)

    def network(self, name: str, plugin: dict[str, Any]) -> str:
        """The network's .conflist in /etc/cni/net.d (the only one there)."""
        self.sh("rm -f /etc/cni/net.d/*")
        path = f"/etc/cni/net.d/10-{name}.conflist"
        self.write(path, json.dumps({"cniVersion": "1.0.0", "name": name,
                                     "plugins": [plugin]}))
        return path

    def claims(self) -> list[Any]:
        listed = self.sh(f"{CTL} --json endpoints")
        found: list[Any] = json.loads(listed.stdout)
        return found

    # -- containerd ----------------------------------------------------------

    def start_containerd(self) -> None:
        self.containerd = self._spawn(
            "containerd.log", "containerd", "--address", CONTAINERD_SOCK,
            "--root", os.path.join(self.work, "containerd-root"),
            "--state", "/run/containerd/state")
        wait_for(lambda: self.containerd.poll() is not None or self.ctr(  # type: ignore[union-attr]
            "version", check=False).returncode == 0, 60, "containerd", interval=0.3)
        if self.containerd.poll() is not None:
            raise RigError("containerd exited: " + self.log("containerd.log")[-2000:])
        archive = os.path.join(self.work, "bb-oci.tar")
        with open(archive, "wb") as f:
            f.write(oci_archive(busybox_rootfs(), IMAGE_REF))
        self.ctr("images", "import", archive, timeout=120)

    def ctr(self, *args: str, check: bool = True, timeout: float = 120
            ) -> subprocess.CompletedProcess[str]:
        return run(*self.inside("ctr", "--address", CONTAINERD_SOCK, "--namespace", NAMESPACE,
                                *args), check=check, timeout=timeout)

    # -- podman --------------------------------------------------------------

    def podman(self, *args: str, check: bool = True, timeout: float = 120
               ) -> subprocess.CompletedProcess[str]:
        conf = os.path.join(self.work, "containers.conf")
        if not os.path.exists(conf):
            with open(conf, "w") as f:
                f.write('[network]\nnetwork_backend = "cni"\n'
                        'cni_plugin_dirs = ["/opt/cni/bin"]\n'
                        'network_config_dir = "/etc/cni/net.d"\n'
                        '[engine]\ncgroup_manager = "cgroupfs"\nevents_logger = "file"\n')
        return run(*self.inside(
            "env", f"CONTAINERS_CONF={conf}", "podman",
            "--root", os.path.join(self.work, "podman-root"), "--runroot", "/run/podman",
            *args), check=check, timeout=timeout)

    def podman_image(self) -> None:
        rootfs = os.path.join(self.work, "bb-rootfs.tar")
        with open(rootfs, "wb") as f:
            f.write(busybox_rootfs())
        self.podman("import", rootfs, IMAGE_REF)

    def close(self) -> None:
        # (containerd, its shims and tasks are in the rig's mount namespace:
        # Rig.close ends them with the rest)
        super().close()
        shutil.rmtree(self.work, ignore_errors=True)
