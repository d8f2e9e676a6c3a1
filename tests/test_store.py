from __future__ import annotations

import os

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from hostnic.errors import StoreError
from hostnic.model import Address, Claim, Network, NicState, Phase, State
from hostnic.store import StateStore
from tests.fakes import run_now
from tests.helpers import EP, MAC1, NET


class StoreTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.store = StateStore(self.mktemp(), run_now)

    def test_round_trip(self) -> None:
        original = NicState("ens4", MAC1, 9000, True, (Address(10, "fd00::5", 64),))
        state = State(networks={NET: Network(NET, (MAC1,), "10.0.0.1", None, ("10.0.0.0/24",),
                                             {"hostnic_mac": MAC1})},
                      claims={EP: Claim(EP, NET, MAC1, Phase.JOINED, original, "/k", 1.0, 2.0)})
        self.store.load()
        self.successResultOf(Deferred.fromCoroutine(self.store.save(lambda: state)))
        self.assertEqual(StateStore(self.store.directory, run_now).load(), state)

    def test_missing_file_is_empty_state_and_stale_temp_is_removed(self) -> None:
        os.makedirs(self.store.directory)
        stale = os.path.join(self.store.directory, "state.json.tmp.123")
        with open(stale, "w") as f:
            f.write("{half")
        self.assertEqual(self.store.load(), State())
        self.assertFalse(os.path.exists(stale))

    def test_corrupt_file_is_a_clear_error(self) -> None:
        os.makedirs(self.store.directory)
        with open(self.store.path, "w") as f:
            f.write("{")
        self.assertIn("is unreadable", str(self.assertRaises(StoreError, self.store.load)))


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
