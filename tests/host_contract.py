"""What every host port (``hostnic.core.ports.HostPort``) must do alike.

The same tests run over the fake host of the unit tests
(``tests/test_host_contract.py``) and over the real netlink host in a
throwaway namespace (``tests/netns/test_host_contract.py``): if the fake
drifts from the kernel, one of the two runs fails.

A subclass provides the host under test and a small "kernel" API to shape
the namespace from outside hostnic (as an administrator, dockerd or another
tool would): ``nic``, ``macvlan_on``, ``veth_pair``, ``bridge_port``,
``rename_outside``, ``flush_outside``, ``default_route_via``, ``look``,
``inventory_unready``/``inventory_ready`` and ``events_delivered``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Coroutine, TypeVar

import attrs
from twisted.internet.defer import Deferred

from hostnic.core.ports import HostPort, Sandbox
from hostnic.errors import HostError
from hostnic.state.model import (AF_INET, AF_INET6, IFA_F_TEMPORARY, Address, LinkInfo, NicRef,
                                 NicState, Route)

T = TypeVar("T")
ABSENT = 999_999  # an interface index no test makes

if TYPE_CHECKING:
    from twisted.trial.unittest import SynchronousTestCase as Mixin
else:
    Mixin = object  # not a test case of its own: pytest collects only its subclasses


class HostContract(Mixin):
    """Mixed into a trial SynchronousTestCase with the kernel API below."""

    host: HostPort

    # -- provided by each side ---------------------------------------------

    def nic(self, name: str, mtu: int = 1500, up: bool = False,
            addresses: tuple[str, ...] = (), mac: str | None = None) -> LinkInfo:
        """A link like the test NICs: a veth (no permanent address)."""
        raise NotImplementedError

    def macvlan_on(self, name: str, lower: str) -> LinkInfo:
        raise NotImplementedError

    def veth_pair(self, name: str, peer: str) -> LinkInfo:
        """Both ends in the host namespace; returns ``name``'s link."""
        raise NotImplementedError

    def bridge_port(self, bridge: str, port: str) -> LinkInfo:
        raise NotImplementedError

    def rename_outside(self, name: str, new: str) -> None:
        raise NotImplementedError

    def flush_outside(self, name: str, mtu: int) -> None:
        """What a namespace move does: addresses gone, link down (and a new MTU)."""
        raise NotImplementedError

    def default_route_via(self, name: str) -> None:
        raise NotImplementedError

    def look(self, name: str) -> tuple[str, str, int, bool, list[str]]:
        """(name, MAC, MTU, up, global addresses) as the kernel has them now."""
        raise NotImplementedError

    def inventory_unready(self) -> None:
        """Events were lost: the inventory resyncs and is not current."""
        raise NotImplementedError

    def inventory_ready(self) -> None:
        raise NotImplementedError

    def events_delivered(self) -> None:
        """Let the reactor read what the kernel queued."""
        raise NotImplementedError

    def handed_sandbox(self) -> Sandbox:
        """A fresh namespace, handed to hostnic as the CNI shim hands one."""
        raise NotImplementedError

    def link_inside(self, sandbox: Sandbox, name: str) -> None:
        """Another link, named ``name``, made inside ``sandbox``."""
        raise NotImplementedError

    def rename_inside(self, sandbox: Sandbox, name: str, new: str) -> None:
        raise NotImplementedError

    def look_inside(self, sandbox: Sandbox, name: str) -> tuple[str, str, int, bool, list[str]]:
        """As ``look``, inside ``sandbox``."""
        raise NotImplementedError

    # -- helpers -------------------------------------------------------------

    def done(self, coroutine: Coroutine[Any, Any, T]) -> T:
        result: T = self.successResultOf(Deferred.fromCoroutine(coroutine))
        return result

    def fails(self, coroutine: Coroutine[Any, Any, Any]) -> str:
        failure = self.failureResultOf(Deferred.fromCoroutine(coroutine), HostError)
        return str(failure.value)

    def recorded(self, link: LinkInfo) -> NicState:
        state = self.done(self.host.inspect(link, with_record=True)).state
        assert state is not None
        return state

    def nic_of(self, link: LinkInfo) -> NicRef:
        assert link.mac is not None
        return NicRef(link.mac, link.perm)

    # -- the contract ----------------------------------------------------------

    def test_locate_finds_a_nic_by_its_mac_and_nothing_for_another(self) -> None:
        ens = self.nic("ens9", mtu=1400, up=True)
        found = self.done(self.host.locate(self.nic_of(ens)))
        assert found is not None
        self.assertEqual((found.index, found.name, found.mtu, found.up),
                         (ens.index, "ens9", 1400, True))
        self.assertIsNone(self.done(self.host.locate(NicRef("02:00:00:00:77:77"))))
        self.assertEqual([l.index for l in self.host.known(self.nic_of(ens))], [ens.index])

    def test_a_link_wearing_the_transit_name_is_not_the_nic_for_its_name(self) -> None:
        ens = self.nic("ens9", up=True)
        squatter = self.nic("hnsquat0")
        found = self.done(self.host.locate(self.nic_of(ens), "hnsquat0"))
        assert found is not None
        self.assertEqual(found.index, ens.index)
        named = self.done(self.host.locate_name("hnsquat0"))
        assert named is not None
        self.assertEqual(named.index, squatter.index)

    def test_a_link_with_a_copy_of_the_mac_is_not_the_nic(self) -> None:
        ens = self.nic("ens9", up=True)
        assert ens.mac is not None
        squatter = self.nic("hnsquat0", mac=ens.mac)  # as a VLAN or a macvlan may
        found = self.done(self.host.locate(self.nic_of(ens), "hnsquat0", ens.index))
        assert found is not None
        self.assertEqual(found.index, ens.index)
        self.inventory_unready()  # the kernel's answer says the same
        found = self.done(self.host.locate(self.nic_of(ens), "hnsquat0", ens.index))
        self.assertEqual(found.index if found else None, ens.index)
        self.assertNotEqual(squatter.index, ens.index)

    def test_a_nic_whose_mac_changed_is_proven_by_its_index(self) -> None:
        ens = self.nic("ens9")
        self.rename_outside("ens9", "hnlent0")
        found = self.done(self.host.locate(NicRef("02:00:00:00:88:88"), "hnlent0", ens.index))
        assert found is not None
        self.assertEqual(found.index, ens.index)
        self.assertIsNone(self.done(self.host.locate(NicRef("02:00:00:00:88:88"), "hnlent0")))

    def test_rename_sets_the_link_down_and_renames_it(self) -> None:
        ens = self.nic("ens9", up=True)
        self.done(self.host.rename(ens.index, "hnlent0"))
        self.assertEqual(self.look("hnlent0")[0::3], ("hnlent0", False))

    def test_a_rename_to_a_taken_name_fails_and_leaves_the_link_down(self) -> None:
        ens = self.nic("ens9", up=True)
        self.nic("taken0")
        message = self.fails(self.host.rename(ens.index, "taken0"))
        self.assertIn("taken0", message)
        self.assertEqual(self.look("ens9")[0::3], ("ens9", False))

    def test_record_then_restore_puts_the_nic_back(self) -> None:
        ens = self.nic("ens9", mtu=1400, up=True, addresses=("10.5.0.5/24", "10.6.0.6/24"))
        before = self.look("ens9")
        original = self.recorded(ens)
        self.assertEqual((original.name, original.mtu, original.up, original.index),
                         ("ens9", 1400, True, ens.index))
        self.done(self.host.rename(ens.index, "hnlent0"))
        self.flush_outside("hnlent0", mtu=1500)
        self.assertEqual(self.done(self.host.restore(ens.index, original)), ())
        self.assertEqual(self.look("ens9"), before)

    def test_restore_leaves_privacy_addresses_to_the_kernel(self) -> None:
        ens = self.nic("ens9", up=True, addresses=("10.5.0.5/24",))
        original = self.recorded(ens)
        privacy = Address(AF_INET6, "fd07::1234:5678", 64, flags=IFA_F_TEMPORARY)
        with_privacy = attrs.evolve(original, addresses=(*original.addresses, privacy))
        self.flush_outside("ens9", mtu=1500)
        self.assertEqual(self.done(self.host.restore(ens.index, with_privacy)), ())
        self.assertEqual(self.look("ens9")[4], ["10.5.0.5/24"])

    def test_restore_names_a_taken_name_and_does_the_rest(self) -> None:
        ens = self.nic("ens9", mtu=1400, up=True, addresses=("10.5.0.5/24",))
        original = self.recorded(ens)
        self.done(self.host.rename(ens.index, "hnlent0"))
        self.flush_outside("hnlent0", mtu=1500)
        self.nic("ens9")  # another link took the NIC's name meanwhile
        problems = self.done(self.host.restore(ens.index, original))
        self.assertEqual(len(problems), 1, problems)
        self.assertIn("name ens9", problems[0])
        self.assertEqual(self.look("hnlent0")[2:], (1400, True, ["10.5.0.5/24"]))

    def test_a_vanished_interface_is_a_host_error(self) -> None:
        original = NicState("ens9", "02:00:00:00:00:09", 1500, True)
        gone = LinkInfo(ABSENT, "ens9", "02:00:00:00:00:09", 1500, 0, None)
        for call in (self.host.inspect(gone, with_record=True), self.host.adopt(ABSENT),
                     self.host.rename(ABSENT, "hnlent0"), self.host.restore(ABSENT, original)):
            self.assertIn(str(ABSENT), self.fails(call))

    def test_devices_on_top_are_uppers_a_veth_peer_is_not(self) -> None:
        ens = self.nic("ens9")
        facts = self.done(self.host.inspect(ens))
        self.assertEqual((facts.master, facts.uppers, facts.state), (None, (), None))
        self.macvlan_on("mv0", "ens9")
        facts = self.done(self.host.inspect(ens))
        self.assertEqual((facts.master, [(u.name, u.kind) for u in facts.uppers]),
                         (None, [("mv0", "macvlan")]))
        peer_of = self.veth_pair("ve0", "ve1")
        self.assertEqual(self.done(self.host.inspect(peer_of)).uppers, ())

    def test_a_bridge_port_names_its_bridge(self) -> None:
        self.nic("ens9")
        port = self.bridge_port("br9", "ens9")
        facts = self.done(self.host.inspect(port))
        assert facts.master is not None
        self.assertEqual((facts.link.master, facts.master.name, facts.master.kind, facts.uppers),
                         (facts.master.index, "br9", "bridge", ()))

    def test_the_host_default_route_marks_its_link(self) -> None:
        ens = self.nic("ens9", up=True, addresses=("10.5.0.5/24",))
        self.assertFalse(self.done(self.host.inspect(ens)).host_default)
        self.default_route_via("ens9")
        self.assertTrue(self.done(self.host.inspect(ens)).host_default)
        survey = self.done(self.host.survey())
        self.assertEqual(survey.management, {ens.index})
        self.assertEqual(survey.addresses[ens.index][0].cidr, "10.5.0.5/24")
        self.assertIn(ens.index, [link.index for link in survey.links])
        self.assertIsNone(survey.pci["ens9"])  # a veth has none

    def test_link_events_tell_the_current_link(self) -> None:
        seen: list[str] = []
        self.host.on_link_appeared(lambda link: seen.append(link.name))
        self.nic("ens9")
        self.rename_outside("ens9", "ens10")
        self.events_delivered()
        self.assertEqual(seen[-1], "ens10")
        self.assertEqual([l.name for l in self.host.all_links() if l.name.startswith("ens")],
                         ["ens10"])

    def test_while_the_inventory_is_not_current_lookups_ask_the_kernel(self) -> None:
        ens = self.nic("ens9")
        self.inventory_unready()
        late = self.nic("ens10", up=True)  # its event is lost
        found = self.done(self.host.locate(self.nic_of(late)))
        assert found is not None
        self.assertEqual(found.name, "ens10")
        named = self.done(self.host.locate_name("ens10"))
        self.assertEqual(named.index if named else None, late.index)
        self.macvlan_on("mv0", "ens9")
        facts = self.done(self.host.inspect(ens, with_record=True))
        self.assertEqual([u.name for u in facts.uppers], ["mv0"])
        self.assertEqual(facts.state.name if facts.state else None, "ens9")
        self.inventory_ready()
        self.assertEqual([l.name for l in self.host.known(self.nic_of(late))], ["ens10"])

    def test_a_virtual_nic_renumbered_by_a_namespace_move_is_known_by_its_mac(self) -> None:
        ens = self.nic("ens9")
        assert ens.mac is not None
        # Its index when lent was another (a namespace it visited held it).
        found = self.done(self.host.locate(self.nic_of(ens), "hnlent0", ens.index + 1000))
        self.assertEqual(found.index if found else None, ens.index)

    def test_a_pci_address_no_device_has_finds_nothing(self) -> None:
        ens = self.nic("ens9")
        self.assertIsNone(ens.pci)  # a veth is on no device: it has no PCI address
        self.assertEqual(self.done(self.host.locate_pci("0000:7f:1f.7")), [])

    # -- a namespace handed over (CNI) ------------------------------------------

    def test_a_nic_moves_into_a_handed_namespace_is_configured_there_and_comes_home(self) -> None:
        ens = self.nic("ens9", mtu=1400, up=True, addresses=("10.7.0.2/24",))
        pod = self.handed_sandbox()
        moved = self.done(self.host.move_into(ens.index, pod, "net1"))
        # Moved and renamed there; like every move, it arrives down and bare.
        self.assertEqual((moved.name, moved.mac, moved.mtu, moved.up),
                         ("net1", ens.mac, 1400, False))
        self.events_delivered()
        self.assertIsNone(self.done(self.host.locate(self.nic_of(ens))))
        self.assertEqual(self.look_inside(pod, "net1"), ("net1", ens.mac, 1400, False, []))
        self.done(self.host.configure_in(
            pod, moved.index, 1300, (Address(AF_INET, "10.8.0.5", 24),),
            (Route(AF_INET, None, 0, "10.8.0.1"),)))
        self.assertEqual(self.look_inside(pod, "net1"),
                         ("net1", ens.mac, 1300, True, ["10.8.0.5/24"]))
        inside = self.done(self.host.look_in(pod, "net1"))
        assert inside is not None
        self.assertEqual((inside.link.index, [a.cidr for a in inside.addresses],
                          [(r.dst, r.gateway) for r in inside.routes]),
                         (moved.index, ["10.8.0.5/24"], [(None, "10.8.0.1")]))
        back = self.done(self.host.bring_home(pod, self.nic_of(ens), "net1", "hnback0", None))
        self.assertEqual((back.name, back.mac) if back else None, ("hnback0", ens.mac))
        self.events_delivered()
        self.assertEqual(self.look("hnback0"), ("hnback0", ens.mac, 1300, False, []))
        found = self.done(self.host.locate(self.nic_of(ens)))
        self.assertEqual(found.name if found else None, "hnback0")
        self.assertIsNone(self.done(self.host.look_in(pod, "net1")))
        # Home already: nothing of it is left there to bring.
        self.assertIsNone(self.done(self.host.bring_home(pod, self.nic_of(ens), "net1",
                                                         "hnback0", None)))

    def test_a_name_taken_in_the_handed_namespace_is_refused_before_the_nic_moves(self) -> None:
        ens = self.nic("ens9", up=True, addresses=("10.7.0.2/24",))
        pod = self.handed_sandbox()
        self.link_inside(pod, "net1")
        why = self.fails(self.host.move_into(ens.index, pod, "net1"))
        self.assertIn("net1", why)
        self.assertEqual(self.look("ens9"), ("ens9", ens.mac, 1500, True, ["10.7.0.2/24"]))

    def test_only_the_nic_comes_home_and_it_is_found_renamed(self) -> None:
        ens = self.nic("ens9")
        pod = self.handed_sandbox()
        self.done(self.host.move_into(ens.index, pod, "net1"))
        self.rename_inside(pod, "net1", "eth5")  # the container renamed it
        self.link_inside(pod, "net1")  # and something else wears its name
        back = self.done(self.host.bring_home(pod, self.nic_of(ens), "net1", "hnback0", None))
        self.assertEqual((back.name, back.mac) if back else None, ("hnback0", ens.mac))
        self.assertIsNone(self.done(self.host.look_in(pod, "eth5")))
        squatter = self.done(self.host.look_in(pod, "net1"))
        self.assertNotEqual(squatter.link.mac if squatter else None, ens.mac)

    def test_a_name_taken_at_home_keeps_the_nic_away_until_it_is_free(self) -> None:
        ens = self.nic("ens9")
        pod = self.handed_sandbox()
        self.done(self.host.move_into(ens.index, pod, "net1"))
        self.nic("hnback0")
        why = self.fails(self.host.bring_home(pod, self.nic_of(ens), "net1", "hnback0", None))
        self.assertIn("hnback0", why)
        self.events_delivered()
        self.assertIsNone(self.done(self.host.locate(self.nic_of(ens))))  # still there
        self.rename_outside("hnback0", "other0")
        back = self.done(self.host.bring_home(pod, self.nic_of(ens), "net1", "hnback0", None))
        self.assertEqual((back.name, back.mac) if back else None, ("hnback0", ens.mac))
