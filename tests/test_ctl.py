"""hostnic-ctl without a daemon: how it reads --admin and its command line,
and how it shows one network and one NIC."""

from __future__ import annotations

import http.client

from twisted.trial.unittest import SynchronousTestCase

from hostnic import ctl


class AdminEndpointTests(SynchronousTestCase):
    def target(self, admin: str) -> tuple[str, object]:
        conn = ctl.connection(admin)
        if isinstance(conn, ctl.UnixHTTPConnection):
            return "unix", conn.unix_path
        kind = "https" if isinstance(conn, http.client.HTTPSConnection) else "http"
        return kind, (conn.host, conn.port)

    def test_the_daemons_endpoint_strings(self) -> None:
        for admin, expected in (
                ("unix:/run/hostnic/admin.sock:mode=600:lockfile=1",
                 ("unix", "/run/hostnic/admin.sock")),
                ("unix:address=/tmp/a.sock", ("unix", "/tmp/a.sock")),
                ("tcp:9123:interface=127.0.0.1", ("http", ("127.0.0.1", 9123))),
                ("tcp:9123", ("http", ("127.0.0.1", 9123))),
                ("tcp:port=9123:interface=0.0.0.0", ("http", ("127.0.0.1", 9123))),
                ("tcp6:9123:interface=\\:\\:1", ("http", ("::1", 9123))),
                ("ssl:9443:interface=admin.example:privateKey=k.pem",
                 ("https", ("admin.example", 9443)))):
            self.assertEqual(self.target(admin), expected, admin)

    def test_the_clients_own_forms(self) -> None:
        self.assertEqual(self.target("/run/hostnic/admin.sock"),
                         ("unix", "/run/hostnic/admin.sock"))
        self.assertEqual(self.target("tcp:10.0.0.1:9123"), ("http", ("10.0.0.1", 9123)))

    def test_what_it_cannot_reach_is_said(self) -> None:
        for admin, words in (("systemd:domain=UNIX:index=1", "a socket systemd hands"),
                             ("tcp:interface=127.0.0.1", "no port"),
                             ("unix:", "no socket path"), ("npipe:x", "use a unix socket")):
            with self.assertRaises(ctl.CtlError) as caught:
                ctl.connection(admin)
            self.assertIn(words, str(caught.exception), admin)


class CommandLineTests(SynchronousTestCase):
    def test_options_before_or_after_the_verb(self) -> None:
        for argv in (["--json", "--admin", "/a.sock", "nics"],
                     ["nics", "--json", "--admin", "/a.sock"],
                     ["--admin", "/a.sock", "nics", "--json"]):
            args = ctl.parse(argv)
            self.assertEqual((args.command, args.json, args.admin), ("nics", True, "/a.sock"),
                             argv)
        args = ctl.parse(["status"])
        self.assertEqual((args.json, args.admin), (False, None))  # found when called

    def test_without_admin_the_debs_socket_else_a_managed_plugins(self) -> None:
        import os
        import shutil
        import socket
        import tempfile
        run = tempfile.mkdtemp(prefix="hn")  # unix socket paths stop at 107 bytes
        self.addCleanup(shutil.rmtree, run, True)
        listening: list[socket.socket] = []

        def serve(path: str) -> None:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            sock = socket.socket(socket.AF_UNIX)
            sock.bind(path)
            sock.listen(1)
            listening.append(sock)
            self.addCleanup(sock.close)

        def stale(path: str) -> None:  # a socket file nobody accepts on
            os.makedirs(os.path.dirname(path), exist_ok=True)
            sock = socket.socket(socket.AF_UNIX)
            sock.bind(path)
            sock.close()

        legacy = f"{run}/hostnic/admin.sock"
        self.assertEqual(ctl.default_admin(run), legacy)  # none: the error names it
        plugin = os.path.join(run, "docker", "plugins", "0f" * 8, ctl.PLUGIN_ADMIN)
        serve(plugin)
        stale(legacy)  # left by an older layout, or a stopped .deb service
        self.assertEqual(ctl.default_admin(run), plugin)
        os.unlink(legacy)
        serve(legacy)
        self.assertEqual(ctl.default_admin(run), legacy)
        listening[-1].close()
        serve(os.path.join(run, "docker", "plugins", "1e" * 8, ctl.PLUGIN_ADMIN))
        with self.assertRaises(ctl.CtlError) as caught:
            ctl.default_admin(run)
        self.assertIn("several managed hostnic plugins", str(caught.exception))

    def test_every_read_method_has_a_verb(self) -> None:
        from hostnic.api import admin
        self.assertTrue(admin.READS <= set(ctl.METHODS.values()))
        self.assertTrue(set(ctl.METHODS.values()) <= set(admin.METHODS))
        self.assertEqual(ctl.parse(["nic", "ens5"]).key, "ens5")
        self.assertEqual(ctl.parse(["network", "abc"]).id, "abc")


RECORDED = {"name": "ens5", "mac": "52:54:00:00:00:01", "mtu": 9001, "admin": "up",
            "addresses": ["10.20.0.7/24", "10.20.0.8/24 noprefixroute"],
            "routes": ["default via 10.20.0.2 table 100"], "sysctls": {"ipv4/rp_filter": "2"},
            "alias": "tenant", "altnames": ["tenant0"], "txqlen": 500, "group": 0,
            "recorded_at": 0}
ADOPTED = {"address4": "10.20.0.7/24", "address6": None, "gateway4": "10.20.0.1",
           "gateway6": None, "routes": ["10.50.0.0/16 via 10.20.0.254"],
           "not_carried": ["10.20.0.8/24"], "read_at": 0}


class RenderTests(SynchronousTestCase):
    def test_one_nic(self) -> None:
        shown = ctl.render("nic", {
            "name": "hn0123456789abc", "mac": "52:54:00:00:00:01", "driver": "virtio_net",
            "kind": "physical", "pci": "0000:00:05.0", "mtu": 1500, "admin": "down",
            "oper": "down", "status": "claimed", "network": "n" * 64, "endpoint": "e" * 64,
            "addresses": [], "recorded": RECORDED, "adopted": ADOPTED,
            "last_restore": {"at": 0, "problems": ["sysctl ipv4/rp_filter=2: denied"]}})
        for line in ("pci:        0000:00:05.0", "  addresses:  10.20.0.7/24, "
                     "10.20.0.8/24 noprefixroute", "  routes:     default via 10.20.0.2 table 100",
                     "  altnames:   tenant0", "  sysctls:    1 (see --json)",
                     "  gateways:    10.20.0.1", "  not carried: 10.20.0.8/24",
                     "not restored: sysctl ipv4/rp_filter=2: denied"):
            self.assertIn(line, shown)

    def test_one_network(self) -> None:
        shown = ctl.render("network", {
            "id": "n" * 64, "mode": "adopt", "gateway4": None, "gateway6": None, "subnets": [],
            "options": {"hostnic_name": "ens5"}, "ipv6": True,
            "pool": [{"mac": "52:54:00:00:00:01", "perm_mac": None, "name": "ens5",
                      "endpoint": None, "adopted": ADOPTED}]})
        self.assertIn("mode:     adopt", shown)
        self.assertIn("NIC 52:54:00:00:00:01 (ens5): free", shown)
        self.assertIn("  routes:      10.50.0.0/16 via 10.20.0.254", shown)
