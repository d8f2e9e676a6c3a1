"""hostnic.kernel.messages loads pyroute2's message classes without its API
(IPRoute, NDB and their asyncio machinery: ~10 MiB of a daemon that idles
at ~45), and the classes encode as the kernel expects."""

from __future__ import annotations

import json
import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase


class MessagesTests(SynchronousTestCase):
    def test_the_message_classes_come_without_pyroute2s_api(self) -> None:
        loaded = json.loads(subprocess.run(
            [sys.executable, "-c",
             "import json, sys; import hostnic.kernel.changes; "
             "print(json.dumps(sorted(m for m in sys.modules if m.startswith('pyroute2'))))"],
            capture_output=True, text=True, check=True, timeout=60).stdout)
        self.assertIn("pyroute2.netlink.rtnl.ifinfmsg", loaded)
        self.assertNotIn("pyroute2.iproute", loaded)
        self.assertNotIn("pyroute2.ndb", loaded)
        self.assertLess(len(loaded), 60, loaded)

    def test_a_rename_encodes_as_rtnetlink(self) -> None:
        from hostnic.kernel import changes
        msg = changes.link_change(5, {"IFLA_IFNAME": "hn0"}, up=False)
        msg["header"]["type"], msg["header"]["flags"] = changes.RTM_SETLINK, changes.SET
        msg["header"]["sequence_number"] = 7
        msg.encode()
        # nlmsghdr, ifinfomsg (family 0, index 5, flags 0, change IFF_UP), IFLA_IFNAME "hn0"
        self.assertEqual(msg.data.hex(),
                         "28000000130005000700000000000000"
                         "00000000050000000000000001000000"
                         "08000300686e3000")
