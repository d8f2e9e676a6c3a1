"""twistd plugin options and the service tree: ``twistd -n hostnic ...``."""

from __future__ import annotations

import os
import time
from typing import Any

import attrs
from twisted.application import service
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort
from twisted.internet.threads import deferToThread
from twisted.logger import Logger
from twisted.python import usage

from hostnic.activation import server_endpoint
from hostnic.admin import AdminAPI, ServiceInfo, read_token
from hostnic.core import Core
from hostnic.driver import DriverAPI
from hostnic.host import NetlinkHost
from hostnic.linkwatch import LinkMonitor
from hostnic.sdnotify import notify
from hostnic.store import StateStore
from hostnic.web import driver_error, json_site, jsonrpc_error

DEFAULT_SOCKET = "unix:/run/docker/plugins/hostnic.sock:mode=660:lockfile=1"
DEFAULT_STATE_DIR = "/var/lib/hostnic"
DEFAULT_ADMIN = "unix:/run/hostnic/admin.sock:mode=600:lockfile=1"
NETWORK_ENDPOINTS = ("tcp:", "tcp6:", "ssl:")


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = ("Serve the hostnic Docker network driver, which hands host NICs to "
                "containers and gives them back as they were.")
    optParameters = [
        ["socket", None, DEFAULT_SOCKET,
         "Twisted server endpoint for the driver API (unix:..., tcp:..., "
         "systemd:domain=UNIX:name=...)."],
        ["state-dir", None, DEFAULT_STATE_DIR, "Directory of hostnic's persisted state."],
        ["admin", None, DEFAULT_ADMIN,
         "Twisted server endpoint for the JSON-RPC admin API."],
        ["admin-token-file", None, None,
         "File holding the bearer token the admin API requires (mandatory on TCP)."],
    ]

    def postOptions(self) -> None:
        from twisted.internet import reactor
        for option in ("socket", "admin"):
            try:
                serverFromString(reactor, self[option])
            except (ValueError, KeyError, TypeError) as e:
                raise usage.UsageError(f"--{option} {self[option]!r} is not a server "
                                       f"endpoint: {e}")
        self["admin-token"] = None
        if self["admin-token-file"]:
            try:
                self["admin-token"] = read_token(self["admin-token-file"])
            except (OSError, ValueError) as e:
                raise usage.UsageError(f"--admin-token-file: {e}")
        elif self["admin"].startswith(NETWORK_ENDPOINTS):
            raise usage.UsageError("the admin API on a network endpoint needs "
                                   "--admin-token-file: anyone who can connect could "
                                   "read hostnic's state and release NICs")


def unix_socket_dir(description: str) -> str | None:
    """The directory of a ``unix:PATH[:k=v...]`` endpoint, to create it first."""
    if not description.startswith("unix:"):
        return None
    rest = description[len("unix:"):]
    path, escaped = [], False
    for char in rest:
        if escaped:
            path.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ":":
            break
        else:
            path.append(char)
    if "".join(path).startswith("address="):
        return None
    return os.path.dirname("".join(path)) or None


@attrs.define(eq=False)
class HostnicService(service.Service):
    reactor: Any
    socket: str
    state_dir: str
    admin: str = DEFAULT_ADMIN
    admin_token: bytes | None = None
    core: Core | None = None
    monitor: LinkMonitor | None = None
    ports: list[IListeningPort] = attrs.field(factory=list)
    log = Logger()

    def startService(self) -> None:
        service.Service.startService(self)
        store = StateStore(self.state_dir, deferToThread)
        state = store.load()
        self.monitor = LinkMonitor(self.reactor, deferToThread)
        self.core = Core(host=NetlinkHost(self.monitor, deferToThread), store=store,
                         state=state)
        driver = DriverAPI(self.core, self.core.journal)
        admin = AdminAPI(self.core, ServiceInfo(
            pid=os.getpid(), started_at=time.time(), state_dir=self.state_dir,
            endpoints={"driver": self.socket, "admin": self.admin}), token=self.admin_token)
        # Listen at once: dockerd must never find the socket missing. Requests
        # that touch state wait inside the core for the reconciliation.
        listens = []
        for name, description, site in (
                ("driver", self.socket, json_site(driver.app.resource(), driver_error)),
                ("admin", self.admin, json_site(admin.app.resource(), jsonrpc_error))):
            directory = unix_socket_dir(description)
            if directory:
                os.makedirs(directory, exist_ok=True)
            listening = server_endpoint(self.reactor, description).listen(site)
            listening.addCallback(self._listening, name)
            listens.append(listening)
        # Readiness for Type=notify: both ports listen (requests that need the
        # reconciliation wait for it inside the core).
        DeferredList(listens, fireOnOneErrback=True, consumeErrors=True).addCallbacks(
            lambda _: notify("READY=1\nSTATUS=serving"),
            lambda failure: self._fatal(failure.value.subFailure))
        Deferred.fromCoroutine(self._reconcile(self.monitor, self.core)).addErrback(self._fatal)
        self.log.info("hostnic starting: driver on {socket}, state in {state_dir}, "
                      "{networks} networks and {claims} claims recorded",
                      socket=self.socket, state_dir=self.state_dir,
                      networks=len(state.networks), claims=len(state.claims))

    async def _reconcile(self, monitor: LinkMonitor, core: Core) -> None:
        await monitor.start()
        await core.start()

    def _listening(self, port: IListeningPort, name: str) -> None:
        self.ports.append(port)
        self.log.info("{api} API listening on {address}", api=name, address=port.getHost())

    def _fatal(self, failure: Any) -> None:
        self.log.critical("hostnic cannot start: {error}", error=failure.getErrorMessage(),
                          log_failure=failure)
        self.reactor.addSystemEventTrigger("after", "shutdown", os._exit, 1)
        self.reactor.stop()

    def stopService(self) -> Any:
        service.Service.stopService(self)
        notify("STOPPING=1")
        if self.monitor is not None:
            self.monitor.stop()
        return DeferredList([maybeDeferred(port.stopListening) for port in self.ports])


def makeService(options: Options) -> service.IService:
    from twisted.internet import reactor
    top = service.MultiService()
    HostnicService(reactor, options["socket"], options["state-dir"], options["admin"],
                   options["admin-token"]).setServiceParent(top)
    return top
