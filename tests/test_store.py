"""The store: complete writes or an error, crash safety between any two steps,
strict reading of the state file, and group commit."""

from __future__ import annotations

import json
import os

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from hostnic.errors import StoreError
from hostnic.model import Address, Claim, Network, NicRef, NicState, Phase, State
from hostnic.statefile import encode
from hostnic.store import StateStore, write_atomically
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

    def save(self, state: State, store: StateStore | None = None) -> Deferred[None]:
        return Deferred.fromCoroutine((store or self.store).save(lambda: state))

    def test_round_trip(self) -> None:
        state = State(networks={NET: Network(NET, (NicRef(MAC1, MAC2),), "10.0.0.1", None,
                                             ("10.0.0.0/24",), {"hostnic_mac": MAC1})},
                      claims={EP: Claim(EP, NET, NicRef(MAC1, MAC2), Phase.JOINED, ORIGINAL,
                                        "/k", 1.0, 2.0)})
        self.successResultOf(self.save(state))
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

    def test_a_short_write_on_a_full_disk_is_an_error_and_changes_nothing(self) -> None:
        self.successResultOf(self.save(big_state(2)))
        with open(self.store.path, "rb") as f:
            before = f.read()
        full = FaultyFileSystem(space=4096)  # one page left: the write is cut short
        store = StateStore(self.store.directory, run_now, fs=full)
        error = self.failureResultOf(self.save(big_state(), store), StoreError).value
        self.assertIn("No space left on device", str(error))
        self.assertEqual(full.steps[:2], ["write", "write"])  # short, then ENOSPC
        with open(self.store.path, "rb") as f:
            self.assertEqual(f.read(), before)
        self.assertEqual(os.listdir(self.store.directory), ["state.json"])
        self.assertEqual(self.store.load(), big_state(2))

    def test_a_filesystem_that_takes_nothing_is_an_error(self) -> None:
        class Stuck(FaultyFileSystem):
            def write(self, fd: int, data: bytes | memoryview) -> int:
                return 0
        self.failureResultOf(self.save(big_state(1), StateStore(self.store.directory, run_now,
                                                                fs=Stuck())), StoreError)
        self.assertEqual(os.listdir(self.store.directory), [])

    def test_a_crash_between_any_two_steps_leaves_old_or_new(self) -> None:
        old, new = big_state(1), big_state(3)
        for step, survivor in (("write", old), ("fsync", old), ("replace", old),
                               ("dir_fsync", new)):
            self.successResultOf(self.save(old))
            fs = FaultyFileSystem(crash_at=step)
            with self.assertRaises(Crash):
                write_atomically(self.store.path, encode(new), fs)
            # A restart: whatever is on disk must load, and be one of the two.
            self.assertEqual(StateStore(self.store.directory, run_now).load(), survivor, step)
            self.assertEqual(os.listdir(self.store.directory), ["state.json"], step)


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
