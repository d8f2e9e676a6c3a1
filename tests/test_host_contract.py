"""The host contract (tests/host_contract.py) over the fake host the unit
tests use; tests/netns/test_host_contract.py runs it over the real one."""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from hostnic.state.model import LinkInfo, NicRef
from hostnic.core.ports import Sandbox
from tests.fakes import FakeHost, FakeLink, FakeSandbox
from tests.host_contract import HostContract


class FakeHostContractTests(HostContract, SynchronousTestCase):
    def setUp(self) -> None:
        self.fake = FakeHost()
        self.host = self.fake
        self.done(self.fake.start())
        self.serial = 0

    def link(self, name: str) -> FakeLink:
        return next(l for l in self.fake.home() if l.name == name)

    def add(self, name: str, mac: str | None = None, **settings: object) -> LinkInfo:
        self.serial += 1
        mac = mac or f"02:00:00:00:10:{self.serial:02x}"
        return self.fake.add(name, mac, **settings).info()

    def nic(self, name: str, mtu: int = 1500, up: bool = False,
            addresses: tuple[str, ...] = (), mac: str | None = None) -> LinkInfo:
        from hostnic.state.model import Address
        parsed = [Address(2, a.split("/")[0], int(a.split("/")[1])) for a in addresses]
        return self.add(name, mac, mtu=mtu, up=up, addresses=parsed)

    def macvlan_on(self, name: str, lower: str) -> LinkInfo:
        return self.add(name, kind="macvlan", link=self.link(lower).index)

    def veth_pair(self, name: str, peer: str) -> LinkInfo:
        first = self.add(name, kind="veth")
        second = self.add(peer, kind="veth", link=first.index)
        self.link(name).link = second.index
        return self.link(name).info()

    def bridge_port(self, bridge: str, port: str) -> LinkInfo:
        master = self.add(bridge, kind="bridge")
        self.link(port).master = master.index
        return self.link(port).info()

    def rename_outside(self, name: str, new: str) -> None:
        self.fake.rename_outside(self.link(name), new)

    def flush_outside(self, name: str, mtu: int) -> None:
        link = self.link(name)
        link.leaves_namespace()
        link.mtu = mtu

    def default_route_via(self, name: str) -> None:
        self.fake.default_route_indexes.add(self.link(name).index)

    def look(self, name: str) -> tuple[str, str, int, bool, list[str]]:
        link = self.link(name)
        return (link.name, link.mac, link.mtu, link.up,
                sorted(a.cidr for a in link.addresses if a.global_scope))

    def inventory_unready(self) -> None:
        self.fake.inventory_ready = False

    def inventory_ready(self) -> None:
        self.fake.inventory_ready = True

    def events_delivered(self) -> None:
        pass  # the fake tells its listeners at once

    def handed_sandbox(self) -> Sandbox:
        self.serial += 1
        return FakeSandbox(f"/run/netns/pod{self.serial}")

    def link_inside(self, sandbox: Sandbox, name: str) -> None:
        self.serial += 1
        self.fake.add_inside(sandbox.key, name, f"02:00:00:00:20:{self.serial:02x}")

    def _inside(self, sandbox: Sandbox, name: str) -> FakeLink:
        return next(l for l in self.fake.links.values() if l.where == sandbox.key
                    and l.name == name)

    def rename_inside(self, sandbox: Sandbox, name: str, new: str) -> None:
        self._inside(sandbox, name).name = new

    def look_inside(self, sandbox: Sandbox, name: str) -> tuple[str, str, int, bool, list[str]]:
        link = self._inside(sandbox, name)
        return (link.name, link.mac, link.mtu, link.up,
                sorted(a.cidr for a in link.addresses if a.global_scope))


class FakePciContractTests(SynchronousTestCase):
    """What the contract says of a NIC on a PCI device, where only the fake
    has one (this machine's NICs are virtio over MMIO: no PCI device at all;
    tests/netns/test_netlink.py checks the kernel's parent device of those)."""

    def setUp(self) -> None:
        self.host = FakeHost()
        self.successResultOf(Deferred.fromCoroutine(self.host.start()))

    def test_a_nic_is_found_and_proven_by_its_pci_address(self) -> None:
        vf = self.host.add("ens5f1v0", "52:54:00:00:0f:01", pci="0000:3b:02.1")
        [found] = self.successResultOf(Deferred.fromCoroutine(
            self.host.locate_pci("0000:3b:02.1")))
        self.assertEqual((found.index, found.pci), (vf.index, "0000:3b:02.1"))
        nic = NicRef(vf.mac, None, "0000:3b:02.1")
        vf.mac = "02:00:00:00:0f:99"  # the cloud, or a container, rewrote it
        self.assertEqual([l.index for l in self.host.known(nic)], [vf.index])
        located = self.successResultOf(Deferred.fromCoroutine(self.host.locate(nic)))
        self.assertEqual(located.index if located else None, vf.index)
        # Another device wearing the NIC's old MAC is not the NIC.
        copy = self.host.add("mv0", "52:54:00:00:0f:01", kind="macvlan")
        self.assertFalse(nic.is_link(copy.info()))
