"""The libnetwork remote driver API as Klein routes: parse, call the core,
shape the answer. One table maps each method to its handler; one place maps
every exception to a JSON ``{"Err": ...}`` answer.
"""

from __future__ import annotations

import time
from typing import Any, Awaitable, Callable, Mapping

import attrs
from klein import Klein
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.web.iweb import IRequest

from hostnic.api.http import dumps, loads, shielded
from hostnic.strictjson import NotJSON
from hostnic.api.libnetwork import (CreateEndpoint, define_network, endpoint_key, lend_nic,
                              network_id_of)
from hostnic.core.events import EventLog
from hostnic.core.narration import telling
from hostnic.core.owner import Core
from hostnic.errors import BadRequest, HostnicError
from hostnic.sentences import capped, quoted

MAX_BODY = 1 << 20  # dockerd's requests are a few KiB
Handler = Callable[[Mapping[str, Any]], Awaitable[dict[str, Any]]]
# Activate and GetCapabilities come with an empty body.
EMPTY_BODY_OK = {"Plugin.Activate", "NetworkDriver.GetCapabilities"}


class Bodyless(BadRequest):
    """dockerd's plugin client resends a call whose connection dropped, but
    from the buffer the first attempt already drained: the retry of a call a
    hostnic restart interrupted has no body (seen with dockerd 20.10; moby's
    callWithRetry is the same in 26)."""


@attrs.define
class DriverAPI:
    core: Core
    calls: EventLog
    clock: Callable[[], float] = time.monotonic
    _handlers: dict[str, Handler] = attrs.field(init=False)
    app = Klein()
    log = Logger()

    def __attrs_post_init__(self) -> None:
        self._handlers = self.handlers()

    def handlers(self) -> dict[str, Handler]:
        core = self.core

        async def activate(body: Mapping[str, Any]) -> dict[str, Any]:
            return {"Implements": ["NetworkDriver"]}

        async def capabilities(body: Mapping[str, Any]) -> dict[str, Any]:
            # Scope local: each node's engine asks its own hostnic, which names
            # that node's NIC (from its own --config-from network).
            # ConnectivityScope global (as Docker's macvlan says): a swarm
            # network of this driver joins the swarm's gossip, so each node's
            # DNS knows the tasks on the other nodes.
            return {"Scope": "local", "ConnectivityScope": "global", "GwAllocChecker": True}

        async def gw_alloc_check(body: Mapping[str, Any]) -> dict[str, Any]:
            # The gateway is the tenant network's router, outside this host.
            return {"SkipIPv4": True, "SkipIPv6": True}

        async def create_network(body: Mapping[str, Any]) -> dict[str, Any]:
            await core.define_network(define_network(body))
            return {}

        async def delete_network(body: Mapping[str, Any]) -> dict[str, Any]:
            await core.drop_network(network_id_of(body))
            return {}

        async def create_endpoint(body: Mapping[str, Any]) -> dict[str, Any]:
            request = CreateEndpoint.parse(body)
            claimed = await core.claim(request.command)
            # Returning a field dockerd filled, even unchanged, fails the endpoint;
            # adopt mode answers the NIC's own addresses for those it left empty.
            interface = {} if request.interface_has_mac else {"MacAddress": claimed.mac}
            if claimed.address4 and not request.interface_has_address:
                interface["Address"] = claimed.address4
            if claimed.address6 and not request.interface_has_address6:
                interface["AddressIPv6"] = claimed.address6
            return {"Interface": interface} if interface else {}

        async def delete_endpoint(body: Mapping[str, Any]) -> dict[str, Any]:
            await core.give_back(endpoint_key(body))
            return {}

        async def oper_info(body: Mapping[str, Any]) -> dict[str, Any]:
            claim = core.claim_of(endpoint_key(body))
            if claim is None:
                return {"Value": {}}
            return {"Value": {"hostnic_mac": claim.mac, "phase": claim.phase.value,
                              "host_name": claim.original.name if claim.original else None}}

        async def join(body: Mapping[str, Any]) -> dict[str, Any]:
            lent = await core.lend(lend_nic(body))
            answer: dict[str, Any] = {
                "InterfaceName": {"SrcName": lent.src_name, "DstPrefix": "eth"},
                # Without this dockerd adds a NAT'd second NIC: a path around the tenant NIC.
                "DisableGatewayService": True,
            }
            if lent.gateway4:
                answer["Gateway"] = lent.gateway4
            if lent.gateway6:
                answer["GatewayIPv6"] = lent.gateway6
            if lent.routes:
                answer["StaticRoutes"] = [
                    {"Destination": route.destination, "RoutingType": 0,
                     "NextHop": route.gateway} if route.gateway
                    else {"Destination": route.destination, "RoutingType": 1}
                    for route in lent.routes]
            return answer

        async def leave(body: Mapping[str, Any]) -> dict[str, Any]:
            await core.leave(endpoint_key(body))
            return {}

        async def nothing(body: Mapping[str, Any]) -> dict[str, Any]:
            return {}

        async def allocate_network(body: Mapping[str, Any]) -> dict[str, Any]:
            return {"Options": {}}  # swarm only; hostnic is local-scope

        return {
            "Plugin.Activate": activate,
            "NetworkDriver.GetCapabilities": capabilities,
            "NetworkDriver.GwAllocCheck": gw_alloc_check,
            "NetworkDriver.CreateNetwork": create_network,
            "NetworkDriver.DeleteNetwork": delete_network,
            "NetworkDriver.AllocateNetwork": allocate_network,
            "NetworkDriver.FreeNetwork": nothing,
            "NetworkDriver.CreateEndpoint": create_endpoint,
            "NetworkDriver.DeleteEndpoint": delete_endpoint,
            "NetworkDriver.EndpointOperInfo": oper_info,
            "NetworkDriver.Join": join,
            "NetworkDriver.Leave": leave,
            "NetworkDriver.ProgramExternalConnectivity": nothing,
            "NetworkDriver.RevokeExternalConnectivity": nothing,
            "NetworkDriver.DiscoverNew": nothing,
            "NetworkDriver.DiscoverDelete": nothing,
        }

    @app.route("/", branch=True)
    def dispatch(self, request: IRequest) -> "Deferred[bytes]":
        return shielded(self._dispatch(request))

    async def _dispatch(self, request: IRequest) -> bytes:
        started = self.clock()
        method = request.path.decode("utf-8", "replace").strip("/")
        with telling() as story:
            status, answer = await self._answer(request, method)
        request.setResponseCode(status)
        request.setHeader(b"Content-Type", b"application/vnd.docker.plugins.v1+json")
        duration = self.clock() - started
        error = answer.get("Err")
        known = method if method in self._handlers else "(unknown)"
        self.calls.record(known, duration, error)
        what = f": {'; '.join(story)}" if story else ""
        if error is None:
            self.log.info("{method} ok in {ms:.1f} ms{what}", method=known,
                          ms=duration * 1000, what=what, outcome="ok")
        else:
            self.log.warn("{method} refused in {ms:.1f} ms: {error}{what}", method=known,
                          ms=duration * 1000, error=error, what=what, outcome="refused",
                          status=status)
        return dumps(answer)

    async def _answer(self, request: IRequest, method: str) -> tuple[int, dict[str, Any]]:
        handler = self._handlers.get(method)
        if handler is None:
            return 404, {"Err": f"hostnic does not implement {quoted(method)}"}
        if request.method != b"POST":
            verb = request.method.decode("latin-1")[:10]
            return 405, {"Err": f"{method} takes POST, not {verb}"}
        try:
            body = self._body(request, method)
            return 200, await handler(body)
        except Bodyless as e:
            if method == "NetworkDriver.DeleteEndpoint":
                # Some endpoint's delete is lost, and dockerd will not ask
                # again: settle every claim now (what reconciliation does at
                # start-up), which releases the NICs dockerd is done with.
                self.core.settle_all()
            return 400, {"Err": capped(e.message)}
        except BadRequest as e:
            return 400, {"Err": capped(e.message)}
        except HostnicError as e:
            return 200, {"Err": capped(e.message)}
        except Exception as e:
            self.log.failure("{method} failed unexpectedly", method=method)
            return 500, {"Err": capped(f"internal error in hostnic ({type(e).__name__}: {e}); "
                                       f"see the hostnic log")}

    def _body(self, request: IRequest, method: str) -> Mapping[str, Any]:
        assert request.content is not None
        raw = request.content.read(MAX_BODY + 1)
        if len(raw) > MAX_BODY:
            raise BadRequest(f"the request body is larger than {MAX_BODY} bytes")
        if not raw.strip():
            if method in EMPTY_BODY_OK:
                return {}
            raise Bodyless(
                f"{method} came without its body: dockerd resends a call that way when "
                f"hostnic restarted while answering it, and hostnic cannot tell which "
                f"network or endpoint it meant; run the docker command again")
        try:
            body = loads(raw)
        except NotJSON as e:
            raise BadRequest(str(e)) from None
        if not isinstance(body, dict):
            raise BadRequest("the request body must be a JSON object")
        return body
