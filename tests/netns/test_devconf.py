"""The per-device settings, read from the link message (hostnic.kernel.devconf)
and from /proc, agree setting by setting on this kernel: at their defaults,
and with each writable one moved off its default."""

from __future__ import annotations

import os

from hostnic.kernel import devconf, record, rtnl
from tests.netns.nsutil import NetnsTestCase, ip

import pytest

pytestmark = pytest.mark.netns

# Values a setting takes besides its default, tried in order (the kernel
# refuses some for some settings: each one gets the first it takes).
CANDIDATES = ("1", "2", "0", "3", "1300", "1200", "7", "123", "4000", "40000")


class DevconfTests(NetnsTestCase):
    def both_ways(self, name: str) -> tuple[dict[str, str], dict[str, str], set[str]]:
        link = rtnl.get_link(name=name)
        assert link is not None
        found = rtnl.get_link_settings(link.index)
        assert found is not None
        from_message = dict(record.read_sysctls(name, found[1]))
        from_proc = dict(record.read_sysctls(name))  # no message: every one from /proc
        carried = set(devconf.settings(found[1]))
        return from_message, from_proc, carried

    def test_defaults_agree_and_most_come_from_the_message(self) -> None:
        self.veth("ens9")
        from_message, from_proc, carried = self.both_ways("ens9")
        self.assertEqual(from_message, from_proc)
        self.assertGreater(len(from_proc), 80)
        # Only what the message lacks is read from /proc.
        self.assertGreater(len(carried & set(from_proc)), len(from_proc) - 8)

    def test_each_setting_moved_off_its_default_agrees(self) -> None:
        """One at a time, so that two slots read in each other's place cannot
        agree by both holding the same value."""
        self.veth("ens9")
        ip("-n", self.ns, "link", "set", "ens9", "up")
        _, defaults, carried = self.both_ways("ens9")
        moved = []
        for key, default in sorted(defaults.items()):
            if key not in carried or key == "ipv6/disable_ipv6":
                continue  # (that one hides the IPv6 settings while set)
            family, _, entry = key.partition("/")
            path = f"{record.SYSCTL_ROOT}/{family}/conf/ens9/{entry}"
            for value in CANDIDATES:
                if value == default or not self.write(path, value):
                    continue
                from_message, from_proc, _ = self.both_ways("ens9")
                if from_proc[key] == default:
                    continue  # taken but not kept
                moved.append(key)
                self.assertEqual(from_message, from_proc, f"after {key}={value}")
                break
            self.write(path, default)
        self.assertGreater(len(moved), 60, f"only {len(moved)} settings could be moved")

    def write(self, path: str, value: str) -> bool:
        try:
            with open(path, "w") as f:
                f.write(value)
            return True
        except OSError:
            return False

    def test_the_seconds_the_message_carries_in_milliseconds(self) -> None:
        self.veth("ens9")
        path = f"{record.SYSCTL_ROOT}/ipv6/conf/ens9/router_solicitation_interval"
        if not os.path.exists(path):
            self.skipTest("no IPv6 here")
        with open(path, "w") as f:
            f.write("9")
        from_message, _, carried = self.both_ways("ens9")
        self.assertIn("ipv6/router_solicitation_interval", carried)
        self.assertEqual(from_message["ipv6/router_solicitation_interval"], "9")
