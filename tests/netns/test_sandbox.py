"""hostnic under the service unit's sandboxing, emulated without systemd as
PID 1: the root filesystem read-only but for the state and run directories
(ProtectSystem=strict), the capability bounding set of the unit
(CapabilityBoundingSet=) and no new privileges. A whole lifecycle on a real
veth must work so, and nothing may be written elsewhere."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from hostnic.state.store import StateStore
from tests.fakes import run_now
from tests.netns.nsutil import ip
from tests.netns.test_daemon import EP, NET, TWISTD, DaemonTestCase

pytestmark = pytest.mark.netns
UNIT = Path(__file__).resolve().parents[2] / "debian" / "hostnic.service"

SANDBOX = r"""
set -e
state="$1" run="$2"; shift 2
for d in "$state" "$run"; do mount --bind "$d" "$d"; done
awk '{print $2}' /proc/self/mounts | sort -u | while read -r m; do
    case "$m" in /proc|/proc/*|/sys|/sys/*|/dev|/dev/*|"$state"|"$run") continue;; esac
    mount -o remount,bind,ro "$m" 2>/dev/null || true
done
exec "$@"
"""


def unit_settings() -> dict[str, str]:
    settings = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            settings[key.strip()] = value.strip()
    return settings


class SandboxTests(DaemonTestCase):
    def test_a_lifecycle_works_under_the_units_sandbox(self) -> None:
        settings = unit_settings()
        self.assertEqual(settings["ProtectSystem"], "strict")
        caps = settings["CapabilityBoundingSet"].split()
        bounding = "-all," + ",".join("+" + c.lower().removeprefix("cap_") for c in caps)
        privileges = ["--no-new-privs"] if settings.get("NoNewPrivileges") == "yes" else []
        state = os.path.join(self.work, "state")
        os.makedirs(state)
        mac = self.veth("ens9")
        ip("-n", self.ns, "addr", "add", "10.5.0.5/24", "dev", "ens9")
        ip("-n", self.ns, "link", "set", "ens9", "up")
        log = open(os.path.join(self.work, "plugin.log"), "ab")
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", self.ns, "unshare", "--mount", "--propagation", "private",
             "sh", "-c", SANDBOX, "sandbox", state, self.work,
             "setpriv", f"--bounding-set={bounding}", "--inh-caps=-all", *privileges,
             TWISTD, "-n", "--pidfile=", "hostnic", "--socket", f"unix:{self.sock}:lockfile=1",
             "--admin", f"unix:{self.admin_sock}:mode=600:lockfile=1",
             "--cni", f"unix:{self.work}/cni.sock:mode=600:lockfile=1", "--state-dir", state],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd="/")
        self.addCleanup(self.kill)
        self.wait_started()

        ref = {"NetworkID": NET, "EndpointID": EP}
        self.assertEqual(self.create_network(NET, mac), {})
        self.assertEqual(self.call("NetworkDriver.CreateEndpoint", {
            **ref, "Interface": {"Address": "10.9.0.10/24"}}), {"Interface": {"MacAddress": mac}})
        src = self.call("NetworkDriver.Join", {**ref, "SandboxKey": "/x"})["InterfaceName"]["SrcName"]
        self.assertIn(src, ip("-n", self.ns, "-br", "link", "show"))  # renamed: CAP_NET_ADMIN
        self.assertEqual(self.call("NetworkDriver.Leave", ref), {})
        self.assertEqual(self.call("NetworkDriver.DeleteEndpoint", ref), {})
        shown = json.loads(ip("-n", self.ns, "-j", "addr", "show", "dev", "ens9"))[0]
        self.assertEqual(("UP" in shown["flags"], [a["local"] for a in shown["addr_info"]
                                                   if a["family"] == "inet"]),
                         (True, ["10.5.0.5"]))
        # What the sandboxed daemon wrote, in its state directory.
        self.assertEqual(list(StateStore(state, run_now).read()[0].networks), [NET])
        with open(log.name) as f:
            self.assertNotIn("Traceback", f.read())
