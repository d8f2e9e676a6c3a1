"""A link's per-device IPv4 and IPv6 settings as the kernel reports them in
its link message (``IFLA_AF_SPEC``: ``IFLA_INET_CONF``, ``IFLA_INET6_CONF``),
named and in the units of their sysctls under /proc/sys/net/ipv{4,6}/conf/.
Reading them there costs one file open per setting (~90 per NIC); the link
message carries them all. The slots are the kernel's ``IPV4_DEVCONF_*`` and
``DEVCONF_*`` enums (uapi, append-only); a sysctl the message does not carry
(a newer kernel's, or one kept outside the array) is read from /proc.
``tests/netns/test_devconf.py`` holds both ways to the same values, setting
by setting."""

from __future__ import annotations

import struct
from typing import Mapping

from hostnic.kernel.rtnl import attributes

AF_INET, AF_INET6 = 2, 10
IFLA_INET_CONF = 1  # within IFLA_AF_SPEC / AF_INET
IFLA_INET6_CONF = 2  # within IFLA_AF_SPEC / AF_INET6

# IPV4_DEVCONF_FORWARDING is 1: the array's first slot.
IPV4 = (
    "forwarding", "mc_forwarding", "proxy_arp", "accept_redirects", "secure_redirects",
    "send_redirects", "shared_media", "rp_filter", "accept_source_route", "bootp_relay",
    "log_martians", "tag", "arp_filter", "medium_id", "disable_xfrm", "disable_policy",
    "force_igmp_version", "arp_announce", "arp_ignore", "promote_secondaries", "arp_accept",
    "arp_notify", "accept_local", "src_valid_mark", "proxy_arp_pvlan", "route_localnet",
    "igmpv2_unsolicited_report_interval", "igmpv3_unsolicited_report_interval",
    "ignore_routes_with_linkdown", "drop_unicast_in_l2_multicast", "drop_gratuitous_arp",
    "bc_forwarding", "arp_evict_nocarrier")

# DEVCONF_FORWARDING is 0.
IPV6 = (
    "forwarding", "hop_limit", "mtu", "accept_ra", "accept_redirects", "autoconf",
    "dad_transmits", "router_solicitations", "router_solicitation_interval",
    "router_solicitation_delay", "use_tempaddr", "temp_valid_lft", "temp_prefered_lft",
    "regen_max_retry", "max_desync_factor", "max_addresses", "force_mld_version",
    "accept_ra_defrtr", "accept_ra_pinfo", "accept_ra_rtr_pref", "router_probe_interval",
    "accept_ra_rt_info_max_plen", "proxy_ndp", "optimistic_dad", "accept_source_route",
    "mc_forwarding", "disable_ipv6", "accept_dad", "force_tllao", "ndisc_notify",
    "mldv1_unsolicited_report_interval", "mldv2_unsolicited_report_interval",
    "suppress_frag_ndisc", "accept_ra_from_local", "use_optimistic", "accept_ra_mtu",
    "stable_secret", "use_oif_addrs_only", "accept_ra_min_hop_limit",
    "ignore_routes_with_linkdown", "drop_unicast_in_l2_multicast", "drop_unsolicited_na",
    "keep_addr_on_down", "router_solicitation_max_interval", "seg6_enabled",
    "seg6_require_hmac", "enhanced_dad", "addr_gen_mode", "disable_policy",
    "accept_ra_rt_info_min_plen", "ndisc_tclass", "rpl_seg_enabled", "ra_defrtr_metric",
    "ioam6_enabled", "ioam6_id", "ioam6_id_wide", "ndisc_evict_nocarrier",
    "accept_untracked_na", "accept_ra_min_lft", "force_forwarding")

# The message carries these in milliseconds; their sysctls show whole seconds.
IPV6_SECONDS = frozenset({"router_solicitation_interval", "router_solicitation_delay",
                          "router_probe_interval", "router_solicitation_max_interval"})
# Unsigned sysctls (the message's slots are signed).
IPV6_UNSIGNED = frozenset({"ra_defrtr_metric", "ioam6_id", "ioam6_id_wide"})
# A string sysctl the array holds only as a flag; never copied back anyway.
IPV6_NOT_A_VALUE = frozenset({"stable_secret"})


def _attributes(data: bytes) -> dict[int, bytes]:
    return dict(attributes(data, 0, len(data)))


def _slots(raw: bytes) -> tuple[int, ...]:
    return struct.unpack(f"={len(raw) // 4}i", raw[:len(raw) // 4 * 4])


def settings(af_spec: bytes) -> dict[str, str]:
    """``{"ipv4/rp_filter": "2", "ipv6/router_solicitation_interval": "4", ...}``
    from the raw ``IFLA_AF_SPEC`` of a link message: every setting the
    message carries, as its sysctl would show it."""
    families = _attributes(af_spec)
    found: dict[str, str] = {}
    inet = _attributes(families.get(AF_INET, b"")).get(IFLA_INET_CONF)
    if inet is not None:
        for name, value in zip(IPV4, _slots(inet)):
            found[f"ipv4/{name}"] = str(value)
    inet6 = _attributes(families.get(AF_INET6, b"")).get(IFLA_INET6_CONF)
    if inet6 is not None:
        for name, value in zip(IPV6, _slots(inet6)):
            if name in IPV6_NOT_A_VALUE:
                continue
            if name in IPV6_SECONDS:
                value //= 1000
            elif name in IPV6_UNSIGNED:
                value &= 0xFFFFFFFF
            found[f"ipv6/{name}"] = str(value)
    return found


def families(af_spec: bytes) -> Mapping[str, bool]:
    """Which of IPv4 and IPv6 the link has settings for (a link without
    IPv6, say one with an MTU under 1280, has no ipv6/conf directory)."""
    present = _attributes(af_spec)
    return {"ipv4": AF_INET in present, "ipv6": AF_INET6 in present}
