"""The admin API: JSON-RPC 2.0 at ``POST /rpc`` and Prometheus text at
``GET /metrics``, answering from the same core (and live inventory) that
serves the driver API. On TCP every request needs ``Authorization: Bearer``."""

from __future__ import annotations

import hmac
import os
import stat
import time
from typing import Any, Callable

import attrs
from klein import Klein
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.web.iweb import IRequest

from hostnic import __version__

from hostnic.api import views
from hostnic.api.http import shielded
from hostnic.api.jsonrpc import INVALID_PARAMS, Dispatcher, Method, RPCError
from hostnic.core.events import EventLog
from hostnic.core.owner import Core
from hostnic.errors import (HostError, HostnicError, InvalidOption, NicUnavailable,
                            PoolExhausted, StoreError, UnknownObject)
from hostnic.sentences import quoted
from hostnic.state.model import NicRef, normalize_mac, normalize_pci, valid_ifname

MAX_BODY = 1 << 20
ERROR_CODES: dict[type[HostnicError], int] = {
    UnknownObject: -32001, NicUnavailable: -32002, PoolExhausted: -32002,
    StoreError: -32003, HostError: -32004, InvalidOption: INVALID_PARAMS,
}


@attrs.frozen
class ServiceInfo:
    pid: int
    started_at: float
    endpoints: dict[str, str]
    state_dir: str


# The JSON-RPC methods and the handlers that answer them.
METHODS = {"status": "status", "networks.list": "networks_list", "networks.get": "networks_get",
           "endpoints.list": "endpoints_list", "nics.list": "nics_list", "nics.get": "nics_get",
           "events.recent": "events_recent", "metrics": "metrics",
           "nics.release": "nics_release", "networks.delete": "networks_delete"}
READS = {name for name in METHODS if name not in ("nics.release", "networks.delete")}


@attrs.define
class AdminAPI:
    core: Core
    info: ServiceInfo
    token: bytes | None = None
    clock: Callable[[], float] = time.time
    rpc: Dispatcher = attrs.field(init=False)
    app = Klein()
    log = Logger()

    def __attrs_post_init__(self) -> None:
        self.rpc = Dispatcher(error_codes=ERROR_CODES)
        for name, attribute in METHODS.items():
            method: Method = getattr(self, attribute)
            self.rpc.register(name, method)

    @property
    def events(self) -> EventLog:
        return self.core.events

    # -- HTTP --------------------------------------------------------------

    def authorized(self, request: IRequest) -> bool:
        """The bearer token, if one is required (the scheme is case-insensitive,
        RFC 7235). The site asks this before it reads a request's body."""
        if self.token is None:
            return True
        header = request.getHeader(b"authorization") or b""
        scheme, _, credentials = header.strip().partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(
            credentials.strip(), self.token)

    def _deny(self, request: IRequest) -> bytes:
        request.setResponseCode(401)
        request.setHeader(b"WWW-Authenticate", b'Bearer realm="hostnic"')
        request.setHeader(b"Content-Type", b"application/json")
        return (b'{"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request: '
                b'this admin endpoint needs Authorization: Bearer <token>"}, "id": null}')

    @app.route("/rpc", methods=["POST"])
    def post_rpc(self, request: IRequest) -> "Deferred[bytes]":
        return shielded(self._post_rpc(request))

    async def _post_rpc(self, request: IRequest) -> bytes:
        if not self.authorized(request):
            return self._deny(request)
        assert request.content is not None
        raw = request.content.read(MAX_BODY + 1)
        request.setHeader(b"Content-Type", b"application/json")
        if len(raw) > MAX_BODY:
            return (b'{"jsonrpc": "2.0", "error": {"code": -32600, "message": '
                    b'"Invalid Request: body larger than 1 MiB"}, "id": null}')
        answer = await self.rpc.handle(raw)
        if answer is None:
            request.setResponseCode(204)  # notifications only: nothing is owed
            return b""
        return answer

    @app.route("/metrics", methods=["GET"])
    def get_metrics(self, request: IRequest) -> bytes:
        if not self.authorized(request):
            return self._deny(request)
        request.setHeader(b"Content-Type", b"text/plain; version=0.0.4")
        return self.prometheus().encode()

    @app.route("/", branch=True)
    def elsewhere(self, request: IRequest) -> bytes:
        request.setResponseCode(405 if request.path in (b"/rpc", b"/metrics") else 404)
        request.setHeader(b"Content-Type", b"application/json")
        return (b'{"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request: '
                b'JSON-RPC is served at POST /rpc, metrics at GET /metrics"}, "id": null}')

    # -- methods -----------------------------------------------------------

    async def status(self) -> dict[str, Any]:
        view = self.core.view()
        state = view.state
        pooled = [nic.mac for n in state.networks.values() for nic in n.pool]
        claimed = {c.mac for c in state.claims.values()}
        return {"version": __version__, "pid": self.info.pid,
                "uptime": round(self.clock() - self.info.started_at, 3),
                "endpoints": self.info.endpoints, "state_dir": self.info.state_dir,
                "networks": len(state.networks), "endpoints_count": len(state.claims),
                "nics_claimed": len(claimed),
                "nics_free": len([m for m in pooled if m not in claimed]),
                "last_reconciliation": view.last_reconciliation}

    def _names(self) -> dict[str, str]:
        return {link.mac: link.name for link in self.core.host_view.links() if link.mac}

    async def networks_list(self) -> list[dict[str, Any]]:
        names, state = self._names(), self.core.view().state
        return [views.network_view(n, state, names) for n in state.networks.values()]

    def _network_id(self, id: str) -> str:
        """The one network a (prefix of an) id names."""
        matches = [n for n in self.core.view().state.networks.values() if n.id.startswith(id)]
        if len(matches) != 1 or not id:
            raise UnknownObject(f"hostnic holds no network {quoted(id)}" if not matches else
                                f"{quoted(id)} names {len(matches)} networks; give more of "
                                f"the id")
        return matches[0].id

    async def networks_get(self, id: str) -> dict[str, Any]:
        state = self.core.view().state
        network = state.networks[self._network_id(id)]
        return views.network_view(network, state, self._names())

    async def networks_delete(self, id: str) -> dict[str, Any]:
        network = await self.core.forget_network(self._network_id(id))
        return {"id": network.id, "freed": network.macs}

    async def endpoints_list(self) -> list[dict[str, Any]]:
        host, view = self.core.host_view, self.core.view()
        return [views.claim_view(c, host.home(c.nic), view.restores)
                for c in view.state.claims.values()]

    async def nics_list(self) -> list[dict[str, Any]]:
        survey = await self.core.host_view.survey()
        view = self.core.view()
        return views.nic_views(survey.links, survey.addresses, survey.pci, survey.management,
                               view.state, view.restores)

    async def nics_get(self, key: str) -> dict[str, Any]:
        """One NIC, by MAC, by PCI address or by interface name."""
        field, wanted = "name", key
        for name, normal in (("mac", normalize_mac), ("pci", normalize_pci)):
            try:
                field, wanted = name, normal(key)
                break
            except InvalidOption:
                pass
        else:
            if not valid_ifname(key):
                raise RPCError(INVALID_PARAMS, f"{quoted(key)} is neither a MAC, a PCI address "
                                               f"nor an interface name")
        for nic in await self.nics_list():
            if nic[field] == wanted:
                return nic
        raise UnknownObject(f"no NIC {quoted(key)} in the host namespace or in hostnic's state")

    async def events_recent(self, limit: int = 50) -> list[dict[str, Any]]:
        if not 1 <= limit <= self.events.size:
            raise RPCError(INVALID_PARAMS, f"limit must be between 1 and {self.events.size}")
        return self.events.last(limit)

    async def metrics(self) -> dict[str, Any]:
        return {method: {"count": s.count, "errors": s.errors,
                         "seconds_total": round(s.total_seconds, 6),
                         "buckets": [[le, n] for le, n in s.cumulative()]}
                for method, s in sorted(self.events.stats.items())}

    async def nics_release(self, mac: str | None = None,
                           pci: str | None = None) -> dict[str, Any]:
        if (mac is None) == (pci is None):
            raise RPCError(INVALID_PARAMS, "give the NIC's mac, or the pci address it was "
                                           "pooled by")
        nic = NicRef(normalize_mac(mac)) if mac is not None else NicRef(
            "", pci=normalize_pci(pci or ""))
        released = await self.core.release(nic)
        return {"mac": released.mac, "endpoint": released.endpoint, "found": released.found,
                "restored": released.restored, "problems": list(released.problems)}

    def prometheus(self) -> str:
        lines = [
            "# HELP hostnic_driver_calls_total Driver API calls, by method.",
            "# TYPE hostnic_driver_calls_total counter"]
        stats = sorted(self.events.stats.items())
        lines += [f'hostnic_driver_calls_total{{method="{m}"}} {s.count}' for m, s in stats]
        lines += ["# HELP hostnic_driver_call_errors_total Driver API calls answered with Err.",
                  "# TYPE hostnic_driver_call_errors_total counter"]
        lines += [f'hostnic_driver_call_errors_total{{method="{m}"}} {s.errors}' for m, s in stats]
        lines += ["# HELP hostnic_driver_call_duration_seconds Driver API call latency.",
                  "# TYPE hostnic_driver_call_duration_seconds histogram"]
        for m, s in stats:
            lines += [f'hostnic_driver_call_duration_seconds_bucket{{method="{m}",le="{le}"}} {n}'
                      for le, n in s.cumulative()]
            lines.append(f'hostnic_driver_call_duration_seconds_sum{{method="{m}"}} '
                         f'{s.total_seconds:.6f}')
            lines.append(f'hostnic_driver_call_duration_seconds_count{{method="{m}"}} {s.count}')
        state = self.core.view().state
        claimed = {c.mac for c in state.claims.values()}
        pooled = {nic.mac for n in state.networks.values() for nic in n.pool}
        lines += ["# TYPE hostnic_networks gauge", f"hostnic_networks {len(state.networks)}",
                  "# TYPE hostnic_endpoints gauge", f"hostnic_endpoints {len(state.claims)}",
                  "# HELP hostnic_cni_attachments Claims a CNI runtime holds (of the endpoints).",
                  "# TYPE hostnic_cni_attachments gauge",
                  f"hostnic_cni_attachments "
                  f"{sum(1 for c in state.claims.values() if c.attachment is not None)}",
                  "# TYPE hostnic_nics gauge",
                  f'hostnic_nics{{state="claimed"}} {len(claimed)}',
                  f'hostnic_nics{{state="free"}} {len(pooled - claimed)}',
                  "# TYPE hostnic_uptime_seconds gauge",
                  f"hostnic_uptime_seconds {self.clock() - self.info.started_at:.3f}"]
        return "\n".join(lines) + "\n"


def read_token(path: str) -> bytes:
    """The admin token; refused if others may read it (then it is no secret)."""
    with open(path, "rb") as f:
        mode = stat.S_IMODE(os.fstat(f.fileno()).st_mode)
        if mode & 0o077:
            raise ValueError(f"token file {path} is open to others (mode {mode:04o}); "
                             f"chmod 600 it")
        token = f.read(4096).strip()
    if not token:
        raise ValueError(f"token file {path} is empty")
    if b" " in token or b"\n" in token:
        raise ValueError(f"token file {path} must hold one token on one line")
    return token
