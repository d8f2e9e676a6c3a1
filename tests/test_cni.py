"""The CNI front end (hostnic.api.cni) of the daemon as the composition root
builds it: the shim's forwarded commands in, CNI results and errors out, in
each version's shape; every bad input a CNI error with the spec's code."""

from __future__ import annotations

import os
from typing import Any

from hostnic.state.model import AF_INET, Address, Attachment
from tests.helpers import EP, MAC1, MAC2, CoreTestCase, claim_request, endpoint_body

POD = "/var/run/netns/cni-1"
CONTAINER = "c" * 64
CONFIG: dict[str, Any] = {"cniVersion": "1.1.0", "name": "tenant", "type": "hostnic",
                          "mac": MAC1, "mtu": 1400}
IPAM = {"cniVersion": "1.1.0",
        "ips": [{"address": "10.8.0.5/24", "gateway": "10.8.0.1"}],
        "routes": [{"dst": "0.0.0.0/0"}, {"dst": "10.9.0.0/16", "gw": "10.8.0.254"}],
        "dns": {"nameservers": ["10.8.0.53"]}}


def env(command: str, container: str = CONTAINER, ifname: str = "net1",
        netns: str = POD) -> dict[str, str]:
    return {"CNI_COMMAND": command, "CNI_CONTAINERID": container, "CNI_NETNS": netns,
            "CNI_IFNAME": ifname, "CNI_ARGS": ""}


class CNITestCase(CoreTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.nic = self.host.add("ens4", MAC1, up=True,
                                 addresses=[Address(AF_INET, "192.168.9.4", 24)])
        assert self.daemon is not None
        self.api = self.daemon.cni

    def handed(self) -> list[int]:
        """Two descriptors, as the shim hands a namespace over."""
        read, write = os.pipe()
        return [read, write]

    def serve(self, command: str, config: dict[str, Any] | None = None, ipam: Any = None,
              fds: list[int] | None = None, **names: str) -> tuple[int, dict[str, Any]]:
        if fds is None:  # (the shim hands over a namespace that still exists)
            fds = self.handed() if command in ("ADD", "CHECK", "DEL") else []
        request = {"env": env(command, **names), "config": config or CONFIG, "ipam": ipam}
        answer: tuple[int, dict[str, Any]] = self.call(self.api.handle(request, fds))
        return answer

    def error(self, command: str, config: dict[str, Any] | None = None, ipam: Any = None,
              **names: str) -> tuple[int, str]:
        status, output = self.serve(command, config, ipam, **names)
        self.assertEqual(status, 1, output)
        self.assertEqual(set(output) - {"details"}, {"cniVersion", "code", "msg"})
        return output["code"], output["msg"]


class AddTests(CNITestCase):
    def test_add_answers_the_result_in_each_version(self) -> None:
        for version, interface, ip in (
                ("1.1.0", {"name": "net1", "mac": MAC1, "sandbox": POD, "mtu": 1400},
                 {"address": "10.8.0.5/24", "gateway": "10.8.0.1", "interface": 0}),
                ("1.0.0", {"name": "net1", "mac": MAC1, "sandbox": POD},
                 {"address": "10.8.0.5/24", "gateway": "10.8.0.1", "interface": 0}),
                ("0.4.0", {"name": "net1", "mac": MAC1, "sandbox": POD},
                 {"address": "10.8.0.5/24", "gateway": "10.8.0.1", "interface": 0,
                  "version": "4"})):
            with self.subTest(version=version):
                config = {**CONFIG, "cniVersion": version}
                status, result = self.serve("ADD", config, IPAM)
                self.assertEqual(status, 0, result)
                self.assertEqual(result, {
                    "cniVersion": version, "interfaces": [interface], "ips": [ip],
                    "routes": [{"dst": "0.0.0.0/0", "gw": "10.8.0.1"},
                               {"dst": "10.9.0.0/16", "gw": "10.8.0.254"}],
                    "dns": {"nameservers": ["10.8.0.53"]}})
                self.assertEqual((self.nic.where, self.nic.name, self.nic.mtu),
                                 (POD, "net1", 1400))
                self.assertEqual(self.serve("DEL", config), (0, {}))
                self.assertEqual((self.nic.where, self.nic.name), ("host", "ens4"))

    def test_adopt_hands_the_nics_own_address(self) -> None:
        status, result = self.serve("ADD", {**CONFIG, "adopt": True})
        self.assertEqual(status, 0, result)
        self.assertEqual([ip["address"] for ip in result["ips"]], ["192.168.9.4/24"])

    def test_the_descriptors_are_closed_whatever_happens(self) -> None:
        for config in (CONFIG, {**CONFIG, "cniVersion": "0.1.0"}, {"bad": 1}):
            with self.subTest(config=config):
                read, write = os.pipe()
                os.set_blocking(read, False)
                self.addCleanup(os.close, read)
                handed = [os.dup(read), os.dup(write)]
                os.close(write)
                self.serve("ADD", config, IPAM, fds=handed)
                # Every write end closed: the pipe reads as ended, not as empty.
                self.assertEqual(os.read(read, 1), b"")
                self.serve("DEL", config)

    def test_what_is_not_a_namespace_is_refused_and_each_descriptor_closed_once(self) -> None:
        from hostnic.api import cni
        from hostnic.kernel import sandbox
        assert self.daemon is not None
        api = cni.CNIAPI(self.core, sandbox.open_handed)  # the kernel's, as twistd builds it
        closed: list[int] = []

        class Counting:
            """``os`` as the two modules see it, counting their closes."""

            def __getattr__(self, name: str) -> Any:
                return getattr(os, name)

            def close(self, fd: int) -> None:
                closed.append(fd)
                os.close(fd)
        self.patch(sandbox, "os", Counting())
        self.patch(cni, "os", Counting())
        for fds in (list(os.pipe()), [os.pipe()[0]]):
            closed.clear()
            status, output = self.call(api.handle(
                {"env": env("ADD"), "config": CONFIG, "ipam": IPAM}, fds))
            self.assertEqual((status, output["code"]), (1, 101), output)
            self.assertIn("not", output["msg"])
            self.assertEqual(sorted(closed), sorted(fds))
        self.assertEqual((self.nic.where, self.core.state.claims), ("host", {}))

    def test_bad_input_is_a_cni_error_with_the_specs_code(self) -> None:
        cases: list[tuple[dict[str, Any], dict[str, str], Any, int, str]] = [
            ({**CONFIG, "cniVersion": "0.3.1"}, {}, IPAM, 1, "does not speak CNI '0.3.1'"),
            ({k: v for k, v in CONFIG.items() if k != "cniVersion"}, {}, IPAM, 7,
             "no cniVersion"),
            ({k: v for k, v in CONFIG.items() if k != "name"}, {}, IPAM, 7, "no network name"),
            ({k: v for k, v in CONFIG.items() if k != "mac"}, {}, IPAM, 7, "names no NIC"),
            ({**CONFIG, "mac": "52:54:00"}, {}, IPAM, 7, "is not a MAC address"),
            ({**CONFIG, "pool": [{"mac": MAC1, "device": "x"}]}, {}, IPAM, 7, "pool[0]"),
            ({**CONFIG, "device": "a b"}, {}, IPAM, 7, "'a b' is not an interface name"),
            ({**CONFIG, "name": "tenant", "mtu": 9_000_000}, {}, IPAM, 7, "is not an MTU"),
            ({**CONFIG, "adopt": True, "ipam": {"type": "static"}}, {}, None, 7,
             "takes no ipam section"),
            (CONFIG, {"ifname": "a/b"}, IPAM, 4, "CNI_IFNAME 'a/b'"),
            (CONFIG, {"container": ""}, IPAM, 4, "CNI_CONTAINERID ''"),
            (CONFIG, {}, {"ips": [{"address": "10.8.0.5"}]}, 6, "with a prefix length"),
            (CONFIG, {}, {"ips": "x"}, 6, "is not a list"),
        ]
        for config, names, ipam, code, words in cases:
            with self.subTest(words=words):
                got, msg = self.error("ADD", config, ipam, **names)
                self.assertEqual(got, code, msg)
                self.assertIn(words, msg)
                self.assertEqual((self.nic.where, self.core.state.claims), ("host", {}))
        for command in ("ADD", "CHECK"):  # (the plugin hands it over whenever it can)
            status, output = self.serve(command, {**CONFIG, "prevResult": {}}, IPAM, fds=[])
            self.assertEqual((status, output["code"]), (1, 4))
            self.assertIn("no network namespace was handed over", output["msg"])
        self.assertEqual(self.call(self.api.handle("not a request", [])),
                         (1, {"cniVersion": "1.1.0", "code": 6, "msg": "the request must "
                              "hold \"env\" and \"config\" objects"}))
        self.assertEqual(self.call(self.api.handle({"env": {"CNI_COMMAND": "VERSION"},
                                                    "config": CONFIG}, []))[1]["code"], 4)

    def test_a_nic_held_elsewhere_and_a_name_taken_inside_are_refused(self) -> None:
        code, msg = self.error("ADD", {**CONFIG, "mac": "02:00:00:00:00:42"}, IPAM)
        self.assertEqual((code, msg), (100, "there is no NIC with MAC 02:00:00:00:00:42 in "
                                            "the host network namespace"))
        self.assertEqual(self.serve("ADD", ipam=IPAM)[0], 0)
        code, msg = self.error("ADD", ipam=IPAM, container="d" * 64)
        self.assertEqual(code, 100)
        self.assertIn(f"{MAC1} by container {CONTAINER[:12]} as net1 (CNI network 'tenant')",
                      msg)
        self.serve("DEL")
        self.host.add_inside(POD, "net1", "02:00:00:00:00:99")
        code, msg = self.error("ADD", ipam=IPAM)
        self.assertEqual(code, 101)
        self.assertIn("an interface named net1 exists in", msg)
        self.assertEqual((self.nic.where, self.nic.name, self.core.state.claims),
                         ("host", "ens4", {}))


class DelCheckGcStatusTests(CNITestCase):
    def test_del_of_what_was_never_held_and_del_twice_succeed(self) -> None:
        self.assertEqual(self.serve("DEL", container="e" * 64), (0, {}))
        self.serve("ADD", ipam=IPAM)
        self.assertEqual(self.serve("DEL"), (0, {}))
        self.assertEqual(self.serve("DEL"), (0, {}))
        self.assertEqual(self.core.state.claims, {})

    def test_check_compares_with_the_previous_result(self) -> None:
        _, result = self.serve("ADD", ipam=IPAM)
        checked = {**CONFIG, "prevResult": result}
        self.assertEqual(self.serve("CHECK", checked), (0, {}))
        self.nic.addresses.clear()
        code, msg = self.error("CHECK", checked)
        self.assertEqual(code, 102)
        status, output = self.serve("CHECK", checked)
        self.assertEqual(output["details"], "address 10.8.0.5/24 is missing")
        self.assertEqual(self.error("CHECK", checked, container="f" * 64)[0], 3)
        self.assertIn("prevResult", self.error("CHECK", CONFIG)[1])

    def test_gc_releases_what_is_not_valid(self) -> None:
        self.host.add("ens5", MAC2)
        pool = {**CONFIG, "mac": [MAC1, MAC2]}
        self.serve("ADD", pool, IPAM)
        self.serve("ADD", pool, IPAM, container="d" * 64, netns="/var/run/netns/cni-2")
        valid = {**pool, "cni.dev/valid-attachments": [{"containerID": "d" * 64,
                                                        "ifname": "net1"}]}
        self.assertEqual(self.serve("GC", valid), (0, {"collected": [
            {"containerID": CONTAINER, "ifname": "net1"}]}))
        self.assertEqual([c.attachment for c in self.core.state.claims.values()
                          if c.phase.value == "joined"],
                         [Attachment("tenant", "d" * 64, "net1")])
        self.assertEqual(self.error("GC", {**pool, "cni.dev/valid-attachments": "x"})[0], 7)

    def test_status_says_whether_a_nic_is_free(self) -> None:
        self.assertEqual(self.serve("STATUS"), (0, {}))
        self.serve("ADD", ipam=IPAM)
        self.assertEqual(self.error("STATUS")[0], 50)

    def test_docker_and_a_pod_each_refuse_what_the_other_holds(self) -> None:
        self.create_network(hostnic_mac=MAC1)
        self.create_endpoint(EP)
        code, msg = self.error("ADD", ipam=IPAM)
        self.assertEqual(code, 100)
        self.assertIn(f"by endpoint {EP[:12]}", msg)
        self.delete_endpoint(EP)
        self.assertEqual(self.serve("ADD", ipam=IPAM)[0], 0)
        self.assertIn(f"by container {CONTAINER[:12]} as net1",
                      self.refused(self.core.claim(claim_request(endpoint_body(EP)))))
