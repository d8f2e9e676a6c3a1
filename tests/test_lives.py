"""hostnic as it runs: one daemon built by the composition root from its
state directory, stopped or crashed and built again any number of times
(``CoreTestCase.new_core`` drops everything in memory and builds anew).
What one life acknowledged, every later life holds."""

from __future__ import annotations

import os

from hostnic.state.store import JOURNAL_PREFIX, STATE_FILE
from tests.helpers import MAC1, MAC2, NET, NET2, CoreTestCase


class LivesTests(CoreTestCase):
    compact_every = 10  # a compaction every few changes

    def setUp(self) -> None:
        super().setUp()
        self.host.add("ens4", MAC1)
        self.host.add("ens5", MAC2)

    def files(self) -> list[str]:
        return sorted(os.listdir(self.state_dir))

    def test_lives_after_a_compaction_keep_what_each_acknowledged(self) -> None:
        """Seen on the installed daemon: a busy first life compacted; the
        second and third each created a network; the fourth had neither (the
        serving store was not the one that loaded, and wrote a journal the
        snapshot did not name)."""
        for _ in range(30):  # a busy day: 60 changes, several compactions
            self.create_network(NET, hostnic_mac=MAC1)
            self.call(self.core.drop_network(NET))
        generation = self.store.read()[1]
        self.assertGreaterEqual(generation, 3)
        self.core = self.new_core()
        self.create_network(NET, hostnic_mac=MAC1)
        self.core = self.new_core()
        self.create_network(NET2, hostnic_mac=MAC2)
        self.core = self.new_core()
        self.assertEqual(sorted(self.core.state.networks), [NET, NET2])
        self.assertEqual(self.files(), [f"{JOURNAL_PREFIX}{generation}", STATE_FILE])
        # And the lives go on compacting from where the disk is.
        for _ in range(5):
            self.call(self.core.drop_network(NET))
            self.create_network(NET, hostnic_mac=MAC1)
        self.core = self.new_core()
        self.assertEqual(sorted(self.core.state.networks), [NET, NET2])
        self.assertGreater(self.store.read()[1], generation)

    def test_a_torn_tail_is_never_appended_after(self) -> None:
        """A crash cut the journal's last record short; the next life must not
        append after the torn bytes (the life after would refuse to start on
        a damaged record with more behind it)."""
        self.create_network(NET, hostnic_mac=MAC1)
        self.crash()
        journal = os.path.join(self.state_dir, f"{JOURNAL_PREFIX}{self.store.read()[1]}")
        with open(journal, "ab") as f:
            f.write(b"\x00\x00\x01\x00\x12\x34\x56\x78{\"put\": \"netw")  # cut short
        self.core = self.new_core()
        self.assertEqual(sorted(self.core.state.networks), [NET])
        self.create_network(NET2, hostnic_mac=MAC2)
        self.core = self.new_core()
        self.assertEqual(sorted(self.core.state.networks), [NET, NET2])

    def test_only_the_store_that_loaded_saves(self) -> None:
        from hostnic.state.store import StateStore
        from tests.fakes import run_now
        from twisted.internet.defer import Deferred
        stranger = StateStore(self.state_dir, run_now)
        self.failureResultOf(Deferred.fromCoroutine(stranger.save(lambda: self.core.state)),
                             RuntimeError)
