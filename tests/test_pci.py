"""The PCI address the admin view shows for a NIC, from a sysfs tree laid
out as the kernel lays it out."""

from __future__ import annotations

import os
import shutil
import tempfile

from twisted.trial.unittest import SynchronousTestCase

from hostnic.api.libnetwork import define_network
from hostnic.kernel.host import pci_address
from hostnic.state.model import NicRef
from tests.helpers import (EP, EP2, MAC1, MAC2, MAC3, NET, NET2, SANDBOX, CoreTestCase,
                           claim_request, endpoint_body, network_body)


class PciAddressTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.sysfs = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.sysfs)
        os.makedirs(f"{self.sysfs}/class/net")

    def nic(self, name: str, device: str | None) -> None:
        """/sys/class/net/NAME, with a ``device`` link to /sys/devices/DEVICE."""
        os.makedirs(f"{self.sysfs}/class/net/{name}")
        if device is not None:
            os.makedirs(f"{self.sysfs}/devices/{device}", exist_ok=True)
            os.symlink(f"../../../devices/{device}", f"{self.sysfs}/class/net/{name}/device")

    def test_virtio_nics_resolve_to_their_pci_function(self) -> None:
        self.nic("ens3", "pci0000:00/0000:00:03.0/virtio2")  # as on a KVM guest
        self.nic("enp1s0", "pci0000:00/0000:00:1c.0/0000:01:00.0")  # behind a PCI bridge
        self.nic("veth0", None)  # virtual: no device
        self.nic("eth9", "platform/soc/ethernet0")  # an SoC NIC: not on PCI
        found = {name: pci_address(name, self.sysfs)
                 for name in ("ens3", "enp1s0", "veth0", "eth9", "absent0")}
        self.assertEqual(found, {"ens3": "0000:00:03.0", "enp1s0": "0000:01:00.0",
                                 "veth0": None, "eth9": None, "absent0": None})


class NamesAtPciTests(SynchronousTestCase):
    def test_a_pci_device_names_its_interfaces_and_its_virtio_devices(self) -> None:
        from hostnic.kernel.host import names_at_pci
        sysfs = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, sysfs)
        for path in ("bus/pci/devices/0000:00:03.0/virtio2/net/ens3",  # a virtio NIC
                     "bus/pci/devices/0000:3b:02.1/net/ens5f1v0",  # a VF
                     "bus/pci/devices/0000:00:1f.2"):  # no NIC on it
            os.makedirs(f"{sysfs}/{path}")
        self.assertEqual({pci: names_at_pci(pci, sysfs) for pci in (
            "0000:00:03.0", "0000:3b:02.1", "0000:00:1f.2", "0000:00:09.0")},
            {"0000:00:03.0": ["ens3"], "0000:3b:02.1": ["ens5f1v0"], "0000:00:1f.2": [],
             "0000:00:09.0": []})


class PciPoolTests(CoreTestCase):
    """Pools and pins by PCI address, where the kernel reports one (an SR-IOV
    VF, a PCI NIC whose MAC the cloud rewrites)."""

    VF1, VF2 = "0000:3b:02.1", "0000:3b:02.2"

    def setUp(self) -> None:
        super().setUp()
        self.vf1 = self.host.add("ens5f1v0", MAC1, up=True, pci=self.VF1)
        self.vf2 = self.host.add("ens5f1v1", MAC2, up=True, pci=self.VF2)
        self.before = self.vf1.state()

    def test_a_pool_and_a_pin_by_pci_address(self) -> None:
        self.create_network(hostnic_pci=f"3b:02.1,{self.VF2.upper()}")
        self.assertEqual(self.core.state.networks[NET].pool,
                         (NicRef(MAC1, None, self.VF1), NicRef(MAC2, None, self.VF2)))
        self.assertEqual(self.create_endpoint(EP, hostnic_pci=self.VF2).mac, MAC2)
        self.assertEqual(self.on_disk()["networks"][0]["pool"][1]["pci"], self.VF2)

    def test_a_rewritten_mac_does_not_hide_the_nic(self) -> None:
        self.create_network(hostnic_pci=self.VF1)
        self.create_endpoint(EP)
        src = self.join().src_name
        inside = self.host.dockerd_moves_in(src, SANDBOX, "192.168.7.10")
        inside.mac = "02:00:00:00:0f:99"  # rewritten while lent
        self.host.kernel_returns(inside)  # home as eth0, its MAC another
        self.assertEqual((self.vf1.where, self.vf1.state()), ("host", self.before))

    def test_refusals_name_what_is_missing(self) -> None:
        self.assertIn("there is no NIC at PCI address 0000:3b:02.7", self.refused(
            self.core.define_network(define_network(network_body(hostnic_pci="0000:3b:02.7")))))
        self.host.add("ens9", MAC3)  # a virtual NIC: no PCI device
        self.create_network(NET2, hostnic_mac=MAC3)
        message = self.refused(self.core.claim(claim_request(
            endpoint_body(EP2, NET2, hostnic_pci=self.VF1))))
        self.assertEqual(message, f"the NIC at PCI address {self.VF1} is not in the pool of "
                                  f"network {NET2[:12]} ({MAC3}); a virtual NIC has no PCI "
                                  f"address: pin it by its MAC")
        from hostnic.errors import InvalidOption
        with self.assertRaises(InvalidOption) as caught:
            define_network(network_body(hostnic_pci="3b:02"))
        self.assertEqual(caught.exception.message,
                         "'3b:02' is not a PCI address (like 0000:00:05.0)")


class PciFunctionsAndVirtioTests(CoreTestCase):
    def test_two_ports_of_one_pci_function_stay_two_nics(self) -> None:
        """A dual-port card's ports share one PCI address: pooled by MAC, each
        is its own NIC (their permanent addresses differ); named by that PCI
        address, the pool is refused with a sentence."""
        port1 = self.host.add("ens5f0", MAC1, up=True, perm=MAC1, pci="0000:5e:00.0")
        port2 = self.host.add("ens5f1", MAC2, up=True, perm=MAC2, pci="0000:5e:00.0")
        before = port2.state()
        self.assertIn("PCI address 0000:5e:00.0 carries several interfaces (ens5f0, ens5f1)",
                      self.refused(self.core.define_network(define_network(network_body(
                          hostnic_pci="0000:5e:00.0")))))
        self.create_network(hostnic_mac=f"{MAC1},{MAC2}")
        self.assertEqual([n.pci for n in self.core.state.networks[NET].pool], [None, None])
        self.assertEqual(self.create_endpoint(EP, mac=MAC2).mac, MAC2)
        src = self.join().src_name
        inside = self.host.dockerd_moves_in(src, SANDBOX, "192.168.7.10")
        self.host.kernel_returns(inside)  # home as eth0: port2, not port1
        self.assertEqual((port2.where, port2.state()), ("host", before))
        self.assertEqual(port1.name, "ens5f0")

    def test_a_virtio_nic_named_by_its_pci_address(self) -> None:
        """The kernel names a virtio NIC's virtio device as its parent: the PCI
        address comes from sysfs, and the NIC is proven as any other."""
        nic = self.host.add("ens3", MAC1, up=True, perm=MAC1, pci="0000:00:03.0",
                            parent_bus="virtio")
        before = nic.state()
        self.create_network(hostnic_pci="0000:00:03.0")
        self.assertEqual(self.create_endpoint(EP, hostnic_pci="0000:00:03.0").mac, MAC1)
        src = self.join().src_name
        inside = self.host.dockerd_moves_in(src, SANDBOX, "192.168.7.10")
        self.leave()
        self.host.dockerd_moves_back(inside, src)
        self.delete_endpoint()
        self.assertEqual((nic.where, nic.state()), ("host", before))


class PinTests(CoreTestCase):
    VF1, VF2 = PciPoolTests.VF1, PciPoolTests.VF2

    def setUp(self) -> None:
        super().setUp()
        self.host.add("ens5f1v0", MAC1, up=True, pci=self.VF1)
        self.host.add("ens5f1v1", MAC2, up=True, pci=self.VF2)

    def test_a_command_pinning_two_nics_is_refused(self) -> None:
        """The driver refuses both pins; the core holds to it for any front end."""
        from hostnic.core.commands import ClaimNic, EndpointKey
        self.create_network(hostnic_pci=f"{self.VF1},{self.VF2}")
        message = self.refused(self.core.claim(ClaimNic(EndpointKey(NET, EP), MAC1, self.VF2)))
        self.assertEqual(message, f"MAC {MAC1} and PCI address {self.VF2} name different NICs; "
                                  f"pin one")
        self.assertEqual(self.call(self.core.claim(ClaimNic(EndpointKey(NET, EP), MAC2,
                                                            self.VF2))).mac, MAC2)
