"""What the core shows an operator: one consistent picture of its networks
and claims, the last restore of each NIC and the last reconciliation, and the
host's links as the inventory has them. The admin API reads these, never the
core's collaborators."""

from __future__ import annotations

from typing import Any, Mapping

import attrs

from hostnic.core.ports import HostPort, HostSurvey
from hostnic.state.model import LinkInfo, NicRef, State


@attrs.frozen
class CoreView:
    state: State
    restores: Mapping[str, Mapping[str, Any]]  # by pooled MAC: when, from what name, problems
    last_reconciliation: Mapping[str, Any] | None


@attrs.frozen
class HostView:
    """The host namespace as an operator sees it (reads only)."""

    _host: HostPort

    def links(self) -> list[LinkInfo]:
        return self._host.all_links()

    def home(self, nic: NicRef) -> bool:
        """Whether ``nic`` is in the host namespace now."""
        return bool(self._host.known(nic))

    async def survey(self) -> HostSurvey:
        """Every link with its addresses and PCI address, and the links the
        host's own default routes leave by."""
        return await self._host.survey()
