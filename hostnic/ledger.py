"""The state and the only way to change it.

A change is applied in memory at once, so a check and the claim it allows
happen with no ``await`` between them, and exclusivity needs no lock. Its
caller then waits until the change is durable; if it cannot be saved it is
undone, but only if nothing replaced the changed object meanwhile.
"""

from __future__ import annotations

from typing import Callable, Protocol

import attrs

from hostnic.model import Claim, Network, State


class Store(Protocol):
    async def save(self, snapshot: Callable[[], State],
                   on_failure: Callable[[], None]) -> None: ...


@attrs.define(eq=False)
class Ledger:
    store: Store
    state: State = attrs.field(factory=State)

    async def put_claim(self, old: Claim | None, new: Claim | None) -> None:
        """Replace endpoint ``(old or new).endpoint_id``'s claim with ``new``
        (None removes it), durably; StoreError if that cannot be saved."""
        endpoint_id = (new or old).endpoint_id  # type: ignore[union-attr]

        def put(state: State, claim: Claim | None) -> State:
            return state.with_claim(claim) if claim is not None else state.without_claim(endpoint_id)

        self.state = put(self.state, new)

        def undo() -> None:
            if self.state.claims.get(endpoint_id) == new:
                self.state = put(self.state, old)

        await self.store.save(lambda: self.state, undo)

    async def put_network(self, old: Network | None, new: Network | None) -> None:
        network_id = (new or old).id  # type: ignore[union-attr]

        def put(state: State, network: Network | None) -> State:
            return (state.with_network(network) if network is not None
                    else state.without_network(network_id))

        self.state = put(self.state, new)

        def undo() -> None:
            if self.state.networks.get(network_id) == new:
                self.state = put(self.state, old)

        await self.store.save(lambda: self.state, undo)
