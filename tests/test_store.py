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
