"""Naming the per-device settings a link message carries (hostnic.kernel.devconf),
on a message built here; tests/netns/test_devconf.py holds them to /proc."""

from __future__ import annotations

import struct

from twisted.trial.unittest import SynchronousTestCase

from hostnic.kernel import devconf
from hostnic.kernel.rtnl import attribute


def af_spec(inet: list[int] | None, inet6: list[int] | None) -> bytes:
    raw = b""
    if inet is not None:
        raw += attribute(devconf.AF_INET, attribute(
            devconf.IFLA_INET_CONF, struct.pack(f"={len(inet)}i", *inet)))
    if inet6 is not None:
        raw += attribute(devconf.AF_INET6, attribute(
            devconf.IFLA_INET6_CONF, struct.pack(f"={len(inet6)}i", *inet6)))
    return raw


class DevconfTests(SynchronousTestCase):
    def test_slots_are_named_in_the_kernels_order(self) -> None:
        inet = list(range(100, 100 + len(devconf.IPV4)))
        found = devconf.settings(af_spec(inet, None))
        self.assertEqual(found["ipv4/forwarding"], "100")  # IPV4_DEVCONF_FORWARDING is 1
        self.assertEqual(found["ipv4/rp_filter"], "107")
        self.assertEqual(found["ipv4/arp_evict_nocarrier"], str(99 + len(devconf.IPV4)))
        self.assertEqual(devconf.families(af_spec(inet, None)), {"ipv4": True, "ipv6": False})

    def test_units_and_signs_as_the_sysctls_show_them(self) -> None:
        inet6 = [0] * len(devconf.IPV6)
        inet6[devconf.IPV6.index("router_solicitation_interval")] = 4000  # ms
        inet6[devconf.IPV6.index("mldv1_unsolicited_report_interval")] = 10000  # ms in both
        inet6[devconf.IPV6.index("ioam6_id_wide")] = -1  # 0xffffffff
        inet6[devconf.IPV6.index("hop_limit")] = 64
        found = devconf.settings(af_spec([1], inet6))
        self.assertEqual(found["ipv6/router_solicitation_interval"], "4")
        self.assertEqual(found["ipv6/mldv1_unsolicited_report_interval"], "10000")
        self.assertEqual(found["ipv6/ioam6_id_wide"], "4294967295")
        self.assertEqual(found["ipv6/hop_limit"], "64")
        self.assertNotIn("ipv6/stable_secret", found)  # a string the array holds as a flag

    def test_a_newer_kernels_longer_array_and_an_older_shorter_one(self) -> None:
        longer = devconf.settings(af_spec([0] * (len(devconf.IPV4) + 3), None))
        self.assertEqual(len(longer), len(devconf.IPV4))  # the unknown slots: read from /proc
        shorter = devconf.settings(af_spec([0] * 10, None))
        self.assertEqual(len(shorter), 10)
        self.assertEqual(devconf.settings(b""), {})
