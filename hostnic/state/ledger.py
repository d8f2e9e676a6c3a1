"""The state and the only way to change it.

Taking is optimistic, freeing is pessimistic:

- A change that takes something (a new claim, a new network, a phase) is
  applied in memory at once, so a check and the claim it allows happen with
  no ``await`` between them and exclusivity needs no lock; its caller then
  waits until it is durable, and if it cannot be saved it is undone (only if
  nothing replaced the changed object meanwhile). Others may have been
  refused because of it in between: a refusal is harmless.
- A change that frees something (a claim dropped, a network deleted) is
  written first and shown in memory only once it is durable. Were it shown at
  once, another endpoint could take the freed NIC, and undoing the failed
  free would then leave the NIC claimed twice.
"""

from __future__ import annotations

from typing import Callable, Protocol, TypeVar

import attrs

from hostnic.state.model import Claim, Network, State

Change = Callable[[State], State]
T = TypeVar("T", Claim, Network)


class Store(Protocol):
    async def save(self, snapshot: Callable[[], State],
                   on_failure: Callable[[], None]) -> None: ...


@attrs.define(eq=False)
class Ledger:
    store: Store
    state: State = attrs.field(factory=State)
    _freeing: list[Change] = attrs.field(factory=list)  # written, not yet shown

    def to_write(self) -> State:
        """What the next save writes: the state with the frees in flight."""
        state = self.state
        for change in self._freeing:
            state = change(state)
        return state

    async def put_claim(self, old: Claim | None, new: Claim | None) -> None:
        """Replace endpoint ``(old or new).endpoint_id``'s claim with ``new``
        (None removes it), durably; StoreError if that cannot be saved."""
        key = (new or old).endpoint_id  # type: ignore[union-attr]
        await self._put(lambda state: state.claims.get(key),
                        lambda state, claim: (state.with_claim(claim) if claim is not None
                                              else state.without_claim(key)), old, new)

    async def put_network(self, old: Network | None, new: Network | None) -> None:
        key = (new or old).id  # type: ignore[union-attr]
        await self._put(lambda state: state.networks.get(key),
                        lambda state, network: (state.with_network(network) if network is not None
                                                else state.without_network(key)), old, new)

    async def _put(self, current: Callable[[State], T | None],
                   put: Callable[[State, T | None], State], old: T | None, new: T | None) -> None:
        if new is None:
            await self._free(lambda state: put(state, None))
            return
        self.state = put(self.state, new)

        def undo() -> None:
            if current(self.state) == new:
                self.state = put(self.state, old)

        await self.store.save(self.to_write, undo)

    async def _free(self, change: Change) -> None:
        self._freeing.append(change)

        def forget() -> None:
            if change in self._freeing:
                self._freeing.remove(change)

        await self.store.save(self.to_write, forget)
        forget()
        self.state = change(self.state)
