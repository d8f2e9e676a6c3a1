"""The ledger's contract: taking is applied at once and undone on a failed
save, unless something replaced it meanwhile; freeing is shown only once it
is durable."""

from __future__ import annotations

import attrs
from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from hostnic.errors import StoreError
from hostnic.state.ledger import Ledger
from hostnic.state.model import Claim, NicRef, Phase, State
from hostnic.state.store import StateStore
from tests.helpers import EP, MAC1, NET


class LedgerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.writes: list[Deferred[None]] = []
        self.store = StateStore(self.mktemp(), self.gated)
        self.store.load()
        self.ledger = Ledger(self.store)
        self.created = Claim(EP, NET, NicRef(MAC1))

    def gated(self, f: object, *args: object) -> Deferred[None]:
        self.writes.append(Deferred())
        return self.writes[-1]

    def put(self, old: Claim | None, new: Claim | None) -> Deferred[None]:
        return Deferred.fromCoroutine(self.ledger.put_claim(old, new))

    def test_a_take_is_seen_at_once_and_undone_if_it_cannot_be_saved(self) -> None:
        d = self.put(None, self.created)
        self.assertEqual(self.ledger.state.claims, {EP: self.created})
        self.writes[0].errback(OSError(28, "No space left on device"))
        self.failureResultOf(d, StoreError)
        self.assertEqual(self.ledger.state, State())

    def test_an_undo_never_overwrites_a_later_change(self) -> None:
        self.put(None, self.created)
        self.writes[0].callback(None)
        joined = attrs.evolve(self.created, phase=Phase.JOINED)
        left = attrs.evolve(self.created, phase=Phase.LEFT)
        first = self.put(self.created, joined)  # written by the first write...
        second = self.put(joined, left)  # ...this one waits for the next
        self.writes[1].errback(OSError(5, "Input/output error"))
        self.failureResultOf(first, StoreError)
        self.assertEqual(self.ledger.state.claims[EP], left)  # not put back to 'created'
        self.writes[2].callback(None)
        self.successResultOf(second)
        self.assertEqual(self.ledger.state.claims[EP], left)

    def test_a_free_is_seen_only_once_durable(self) -> None:
        self.put(None, self.created)
        self.writes[0].callback(None)
        d = self.put(self.created, None)
        self.assertIn(EP, self.ledger.state.claims)  # nobody may take the NIC yet
        self.assertEqual(self.ledger.to_write().claims, {})  # but it is being written
        self.writes[1].errback(OSError(28, "No space left on device"))
        self.failureResultOf(d, StoreError)
        self.assertIn(EP, self.ledger.state.claims)
        self.assertIn(EP, self.ledger.to_write().claims)
        d = self.put(self.created, None)
        self.writes[2].callback(None)
        self.successResultOf(d)
        self.assertEqual(self.ledger.state.claims, {})
