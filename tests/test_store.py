"""The store: complete writes or an error, crash safety between any two steps,
strict reading of the state file, and group commit."""

from __future__ import annotations

import json

import attrs
import os
from typing import Any

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from hostnic.errors import StoreError
from hostnic.state.fileformat import decode, encode
from hostnic.state.model import (Address, Adopted, Claim, Network, NicRef, NicState, Phase, Route,
                           State)
from hostnic.state.store import StateStore
from tests.fakes import Crash, FaultyFileSystem, run_now
from tests.helpers import EP, MAC1, MAC2, NET

ORIGINAL = NicState("ens4", MAC1, 9000, True, (Address(10, "fd00::5", 64),))


def big_state(networks: int = 40) -> State:
    state = State()
    for i in range(networks):
        state = state.with_network(Network(f"{i:064x}", (NicRef(f"52:54:00:00:{i // 256:02x}:"
                                                                f"{i % 256:02x}"),),
                                           "10.0.0.1", None, ("10.0.0.0/24",), {}))
    return state


class StoreTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.store = StateStore(self.mktemp(), run_now)
        self.store.load()

    def save(self, state: State, store: StateStore | None = None) -> "Deferred[None]":
        return Deferred.fromCoroutine((store or self.store).save(lambda: state))

    def test_round_trip(self) -> None:
        state = State(networks={NET: Network(NET, (NicRef(MAC1, MAC2),), "10.0.0.1", None,
                                             ("10.0.0.0/24",), {"hostnic_mac": MAC1})},
                      claims={EP: Claim(EP, NET, NicRef(MAC1, MAC2), Phase.JOINED, ORIGINAL,
                                        "/k", 1.0, 2.0)})
        self.successResultOf(self.save(state))
        self.assertEqual(StateStore(self.store.directory, run_now).load(), state)

    def test_a_whole_nic_record_and_an_adopted_configuration_round_trip(self) -> None:
        lease = Address(2, "10.0.0.5", 24, flags=0x200, label="ens4:a", valid=3600,
                        preferred=1800, broadcast="10.0.0.255")
        routes = (Route(2, None, 0, "10.0.0.1", table=100, priority=5, protocol=4),
                  Route(2, "10.9.0.0", 24, None, scope=253, prefsrc="10.0.0.5"),
                  Route(10, "fd09::", 64, "fd00::1", priority=7))
        whole = NicState("ens4", MAC1, 9000, False, (lease, Address(10, "fd00::5", 64)),
                         routes=routes, sysctls=(("ipv4/rp_filter", "2"),
                                                 ("ipv6/accept_ra", "0")),
                         alias="tenant uplink", altnames=("tenant0", "enp0s4"), txqlen=500,
                         group=7, recorded_at=1234.5)
        adopted = Adopted(lease, Address(10, "fd00::5", 64), "10.0.0.1", "fd00::1",
                          routes[1:], (Address(2, "10.0.0.6", 24),), 99.0)
        state = State(networks={NET: Network(NET, (NicRef(MAC1),), options={"hostnic_name": "ens4"},
                                             adopt=True, ipv6=True, adopted={MAC1: adopted})},
                      claims={EP: Claim(EP, NET, NicRef(MAC1), Phase.JOINED, whole, "/k", 1.0,
                                        2.0, adopted=adopted)})
        self.assertEqual(decode(encode(state)), state)  # the snapshot
        self.successResultOf(self.save(state))  # the journal
        self.assertEqual(StateStore(self.store.directory, run_now).load(), state)

    def test_version_1_files_are_read(self) -> None:
        with open(self.store.path, "w") as f:
            json.dump({"version": 1, "networks": [
                {"id": NET, "pool": [MAC1], "gateway4": "10.0.0.1", "subnets": [], "options": {}}],
                "claims": [{"endpoint_id": EP, "network_id": NET, "mac": MAC1,
                            "phase": "created", "original": None}]}, f)
        state = self.store.load()
        self.assertEqual(state.networks[NET].pool, (NicRef(MAC1),))
        self.assertEqual(state.claims[EP].nic, NicRef(MAC1))

    def test_version_2_files_are_read_and_version_3_keeps_pci_addresses(self) -> None:
        with open(self.store.path, "w") as f:
            json.dump({"version": 2, "generation": 0, "networks": [
                {"id": NET, "pool": [{"mac": MAC1, "perm": MAC2}], "gateway4": "10.0.0.1",
                 "subnets": [], "options": {}}], "claims": []}, f)
        state = self.store.load()
        self.assertEqual(state.networks[NET].pool, (NicRef(MAC1, MAC2),))
        vf = NicRef(MAC1, None, "0000:3b:02.1")
        pci_state = State(networks={NET: Network(NET, (vf,), "10.0.0.1")})
        self.successResultOf(self.save(pci_state))
        self.assertEqual(StateStore(self.store.directory, run_now).load(), pci_state)
        self.assertEqual(decode(encode(pci_state)), pci_state)
        self.assertEqual(json.loads(encode(pci_state))["version"], 3)

    def test_a_newer_format_is_refused_with_a_sentence(self) -> None:
        with open(self.store.path, "w") as f:
            json.dump({"version": 4, "networks": [], "claims": []}, f)
        message = str(self.assertRaises(StoreError, self.store.load))
        self.assertIn("version: 4 is not a format this hostnic reads (1, 2, 3)", message)

    def test_missing_file_is_empty_state_and_stale_temp_is_removed(self) -> None:
        stale = os.path.join(self.store.directory, "state.json.tmp.123")
        with open(stale, "w") as f:
            f.write("{half")
        self.assertEqual(self.store.load(), State())
        self.assertFalse(os.path.exists(stale))

    def test_a_damaged_file_is_one_sentence_and_left_alone(self) -> None:
        cases = {
            b"{": "it is not JSON",
            # the seed's short write: 4,096 bytes ending mid-object
            encode(big_state())[:4096]: "it is not JSON",
            json.dumps({"version": 2, "networks": [{"id": NET, "pool": MAC1}]}).encode():
                "networks[0].pool: expected a non-empty list of NICs, found a string",
            json.dumps({"version": 2, "networks": [{"id": NET, "pool": [{"mac": "zz"}]}]}).encode():
                "networks[0].pool[0].mac: 'zz' is not a MAC address",
            json.dumps({"version": 9}).encode(): "version: 9 is not a format",
            json.dumps({"version": 2, "claims": [{"endpoint_id": EP, "network_id": NET,
                                                  "nic": {"mac": MAC1}, "phase": "joined"}]}).encode():
                "claims[0].original: a joined claim must record the NIC's original state",
            json.dumps({"version": 2, "claims": [{"endpoint_id": EP, "network_id": NET,
                        "nic": {"mac": MAC1}, "phase": "left", "original": {
                            "name": "ens4", "mac": MAC1, "mtu": "9000", "up": True}}]}).encode():
                "claims[0].original.mtu: expected int, found a string",
            b"[" * 100_000: "nested too deeply",
            b'{"version": NaN}': "it is not JSON",
        }
        for raw, problem in cases.items():
            with open(self.store.path, "wb") as f:
                f.write(raw)
            message = str(self.assertRaises(StoreError, self.store.load))
            self.assertIn(problem, message, raw[:60])
            self.assertTrue(message.startswith(f"the state file {self.store.path} is damaged ("))
            self.assertIn("move it aside to start with no state", message)
            self.assertNotIn("\n", message)
            with open(self.store.path, "rb") as f:
                self.assertEqual(f.read(), raw)  # nothing is lost silently

    def files(self) -> list[str]:
        return sorted(os.listdir(self.store.directory))

    def reread(self) -> State:
        return StateStore(self.store.directory, run_now).load()

    def test_changes_go_to_the_journal_and_compaction_to_a_snapshot(self) -> None:
        store = StateStore(self.store.directory, run_now, compact_every=5)
        store.load()
        for n in range(1, 5):
            self.successResultOf(self.save(big_state(n), store))
        self.assertEqual(self.files(), ["journal.0"])  # four small appends, no rewrite
        self.assertEqual(self.reread(), big_state(4))
        self.successResultOf(self.save(big_state(8), store))  # past five records
        self.assertEqual(self.files(), ["state.json"])  # a snapshot; its journal comes later
        self.assertEqual(self.reread(), big_state(8))
        self.successResultOf(self.save(big_state(9), store))
        self.assertEqual(self.files(), ["journal.1", "state.json"])
        self.assertEqual(self.reread(), big_state(9))
        self.successResultOf(self.save(big_state(2), store))  # drops too
        self.assertEqual(self.reread(), big_state(2))

    def test_a_new_journal_is_named_durably_before_its_first_record_counts(self) -> None:
        fs = FaultyFileSystem()
        self.store.fs = fs
        self.successResultOf(self.save(big_state(1)))
        # Created, its directory entry flushed, then the record written and flushed:
        # an fdatasync alone would not keep a file whose name was never synced.
        self.assertEqual(fs.steps, ["dir_fsync", "write", "fdatasync"])
        self.successResultOf(self.save(big_state(2)))
        self.assertEqual(fs.steps[3:], ["write", "fdatasync"])  # later appends need none

    def test_a_torn_last_record_is_ignored_and_never_appended_to(self) -> None:
        self.successResultOf(self.save(big_state(2)))
        journal = os.path.join(self.store.directory, "journal.0")
        size = os.path.getsize(journal)
        self.successResultOf(self.save(big_state(3)))
        with open(journal, "r+b") as f:  # a crash in the middle of the last append
            f.truncate(size + 7)
        store = StateStore(self.store.directory, run_now)
        self.assertEqual(store.load(), big_state(2))
        self.successResultOf(self.save(big_state(4), store))  # a snapshot, not an append
        self.assertEqual(self.files(), ["state.json"])
        self.assertEqual(self.reread(), big_state(4))
        self.flushLoggedErrors()

    def test_a_damaged_record_in_the_middle_is_damage(self) -> None:
        for n in (1, 2, 3):
            self.successResultOf(self.save(big_state(n)))
        journal = os.path.join(self.store.directory, "journal.0")
        with open(journal, "r+b") as f:
            f.seek(12)
            f.write(b"X")
        message = str(self.assertRaises(StoreError, self.reread))
        self.assertIn(f"the state file {journal} is damaged (record 1 of the journal is "
                      f"damaged and more follows it)", message)

    def test_a_short_write_on_a_full_disk_is_an_error_and_changes_nothing(self) -> None:
        self.successResultOf(self.save(big_state(2)))
        journal = os.path.join(self.store.directory, "journal.0")
        with open(journal, "rb") as f:
            before = f.read()
        full = FaultyFileSystem(space=30)  # less than the next record
        self.store.fs = full
        error = self.failureResultOf(self.save(big_state(3)), StoreError).value
        self.assertIn("No space left on device", str(error))
        self.assertEqual(full.steps[:3], ["write", "write", "ftruncate"])  # short, ENOSPC
        with open(journal, "rb") as f:
            self.assertEqual(f.read(), before)  # what got through was taken back
        self.assertEqual(self.reread(), big_state(2))
        # The tail was taken back, so appends go on; a bigger one fails alike.
        full.space = 100
        self.failureResultOf(self.save(big_state(40)), StoreError)
        self.assertEqual(self.files(), ["journal.0"])
        self.assertEqual(self.reread(), big_state(2))
        self.store.fs = os  # space again: the next save works
        self.successResultOf(self.save(big_state(40)))
        self.assertEqual(self.reread(), big_state(40))

    def test_a_snapshot_cut_short_on_a_full_disk_is_an_error_and_leaves_no_temp_file(
            self) -> None:
        store = StateStore(self.store.directory, run_now, compact_every=1)
        store.load()
        self.successResultOf(self.save(big_state(2), store))  # two records: a snapshot
        self.assertEqual(self.files(), ["state.json"])
        store.fs = FaultyFileSystem(space=100)  # the next snapshot is cut short
        error = self.failureResultOf(self.save(big_state(40), store), StoreError).value
        self.assertIn("No space left on device", str(error))
        self.assertEqual(store.fs.steps[:2], ["write", "write"])  # short, then ENOSPC
        self.assertEqual(self.files(), ["state.json"])  # no temp file left
        self.assertEqual(self.reread(), big_state(2))
        store.fs = os
        self.successResultOf(self.save(big_state(40), store))
        self.assertEqual(self.reread(), big_state(40))

    def test_a_filesystem_that_takes_nothing_is_an_error(self) -> None:
        class Stuck(FaultyFileSystem):
            def write(self, fd: int, data: bytes | memoryview) -> int:
                return 0
        self.store.fs = Stuck()
        self.failureResultOf(self.save(big_state(1)), StoreError)
        self.assertEqual(self.reread(), State())

    def test_a_crash_between_any_two_steps_leaves_old_or_new(self) -> None:
        """Every step of an append and of a compaction, crashed before in turn."""
        old, new = big_state(2), big_state(3)
        either = None  # written to the kernel, not yet flushed: a process crash keeps it
        cases = [("write", 0, old), ("fdatasync", 0, either),  # an append
                 ("write", 0, old), ("fsync", 0, old), ("replace", 0, old),  # a compaction
                 ("dir_fsync", 0, new), ("unlink", 0, new)]
        for i, (step, after, survivor) in enumerate(cases):
            directory = self.mktemp()
            first = StateStore(directory, run_now, fs=FaultyFileSystem())
            first.load()
            self.successResultOf(self.save(old, first))  # a journal record
            first.close()
            store = StateStore(directory, run_now, compact_every=1 if i >= 2 else 1000)
            store.load()
            store.fs = FaultyFileSystem(crash_at=step, crash_after=after)
            with self.assertRaises(Crash):
                store._persist(new)
            # A restart: whatever is on disk must load, and be one of the two.
            loaded = StateStore(directory, run_now).load()
            self.assertIn(loaded, [old, new] if survivor is None else [survivor], (i, step))
            self.assertNotIn(".tmp.", " ".join(os.listdir(directory)), (i, step))


class CloseTests(SynchronousTestCase):
    def test_closing_while_a_write_runs_closes_the_journal_after_it(self) -> None:
        """A stop closes the store while a request's write may still run in
        its thread: that write must finish on its own descriptor."""
        held: list[tuple[Deferred[None], Any, tuple[Any, ...]]] = []

        def gated(f: Any, *args: Any) -> Deferred[None]:
            held.append((Deferred(), f, args))
            return held[-1][0]

        store = StateStore(self.mktemp(), gated)
        store.load()
        for networks in (1, 2):
            saved = Deferred.fromCoroutine(store.save(lambda: big_state(networks)))
            if networks == 2:
                store.close()  # the stop comes while this write is in its thread
                self.assertIsNotNone(store._journal)
            d, f, args = held.pop()
            f(*args)  # the thread writes
            d.callback(None)
            self.successResultOf(saved)
        self.assertIsNone(store._journal)
        self.assertEqual(StateStore(store.directory, run_now).load(), big_state(2))


class GroupCommitTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.writes: list[Deferred[None]] = []
        self.store = StateStore(self.mktemp(), self.gated)
        self.store.load()
        self.state = State()

    def gated(self, f: object, *args: object) -> Deferred[None]:
        self.writes.append(Deferred())
        return self.writes[-1]

    def save(self, undo: list[str] | None = None, tag: str = "") -> Deferred[None]:
        return Deferred.fromCoroutine(self.store.save(
            lambda: self.state, lambda: undo.append(tag) if undo is not None else None))

    def test_saves_arriving_during_a_write_share_the_next_one(self) -> None:
        first = self.save()
        later = [self.save() for _ in range(5)]
        self.assertEqual(len(self.writes), 1)
        self.writes[0].callback(None)
        self.successResultOf(first)
        for d in later:
            self.assertNoResult(d)
        self.assertEqual(len(self.writes), 2)  # one write for all five
        self.writes[1].callback(None)
        for d in later:
            self.successResultOf(d)

    def test_a_failed_write_undoes_and_fails_each_of_its_waiters(self) -> None:
        undone: list[str] = []
        first = self.save(undone, "a")
        second = self.save(undone, "b")
        self.writes[0].errback(OSError(28, "No space left on device"))
        self.assertEqual(undone, ["a"])
        self.assertIn("No space left", str(self.failureResultOf(first, StoreError).value))
        self.writes[1].errback(OSError(5, "Input/output error"))
        self.assertEqual(undone, ["a", "b"])
        self.failureResultOf(second, StoreError)


class PlainFormTests(SynchronousTestCase):
    """A NIC's record is kept in its plain form between a claim's phases
    (fileformat._plain): each record must still be written as itself."""

    def test_every_record_is_written_as_itself(self) -> None:
        from hostnic.state.fileformat import claim_json
        claims = []
        for i in range(600):  # past what is kept: the cache empties and fills again
            original = NicState(f"ens{i}", MAC1, 1500 + i, True, sysctls=(("ipv4/tag", str(i)),))
            claims.append(Claim(endpoint_id=f"ep{i}", network_id=NET, nic=NicRef(MAC1),
                                phase=Phase.JOINED, original=original))
        for _ in range(2):
            for i, claim in enumerate(claims):
                plain = claim_json(claim)["original"]
                self.assertEqual((plain["name"], plain["mtu"], json.loads(json.dumps(plain["sysctls"]))),
                                 (f"ens{i}", 1500 + i, [["ipv4/tag", str(i)]]))
        # Records that come and go (an id is reused once its object is gone).
        for i in range(600):
            original = NicState(f"eth{i}", MAC1, 9000 - i, True)
            claim = Claim(endpoint_id="ep", network_id=NET, nic=NicRef(MAC1),
                          phase=Phase.JOINED, original=original)
            self.assertEqual(claim_json(claim)["original"]["name"], f"eth{i}")
            del original, claim
        # An equal record that is another object is written the same.
        again = NicState("ens0", MAC1, 1500, True, sysctls=(("ipv4/tag", "0"),))
        self.assertEqual(claim_json(attrs.evolve(claims[0], original=again)), claim_json(claims[0]))
