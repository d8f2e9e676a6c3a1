"""The PCI address the admin view shows for a NIC, from a sysfs tree laid
out as the kernel lays it out."""

from __future__ import annotations

import os
import shutil
import tempfile

from twisted.trial.unittest import SynchronousTestCase

from hostnic.kernel.host import pci_address


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
