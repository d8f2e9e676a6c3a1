"""twistd plugin options and the service tree: ``twistd -n hostnic ...``."""

from __future__ import annotations

import ctypes
import gc
import os
import resource
import sys
from typing import Any, Mapping

import attrs
from twisted.application import service
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.address import UNIXAddress
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort
from twisted.internet.task import LoopingCall
from twisted.logger import ILogObserver, Logger
from twisted.python import usage
from twisted.python.components import Componentized
from twisted.python.failure import Failure

from hostnic.api.admin import read_token
from hostnic.daemon import sockets
from hostnic.daemon.activation import server_endpoint
from hostnic.daemon.compose import Daemon, Settings, build, kernel_ports
from hostnic.daemon.hostlock import claim_host, describe_self
from hostnic.daemon.journald import text_observer
from hostnic.daemon.sdnotify import notify, watchdog_interval
from hostnic.endpoints import parse_endpoint
from hostnic.errors import HostnicError
from hostnic.kernel import record

STOP_GRACE = 10.0  # seconds a stop waits for calls and work under way, each
DEFAULT_SOCKET = "unix:/run/docker/plugins/hostnic.sock:mode=660:lockfile=1"
DEFAULT_STATE_DIR = "/var/lib/hostnic"
DEFAULT_ADMIN = "unix:/run/hostnic/admin.sock:mode=600:lockfile=1"
DEFAULT_CNI = "unix:/run/hostnic/cni.sock:mode=600:lockfile=1"


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
        ["cni", None, DEFAULT_CNI,
         "Twisted server endpoint the hostnic-cni plugin forwards CNI commands to "
         "(root only: it hands over network namespaces); \"\" serves no CNI."],
        ["admin-token-file", None, None,
         "File holding the bearer token the admin API requires (mandatory on TCP)."],
        ["client-timeout", None, 30.0,
         "Seconds a client has to send a whole request before it is dropped.", float],
        ["netns-dir", None, None,
         "Where dockerd's namespace files (its SandboxKeys, /run/docker/netns/ID) "
         "are seen from here, if not at their own paths (a managed plugin)."],
        ["sysctl-dir", None, record.SYSCTL_ROOT,
         "Where the host's /proc/sys/net is writable (a managed plugin's "
         "/proc/sys is read-only: it mounts the host's elsewhere)."],
    ]

    def postOptions(self) -> None:
        from twisted.internet import reactor
        self["admin-token"] = None
        if self["admin-token-file"]:
            try:
                self["admin-token"] = read_token(self["admin-token-file"])
            except (OSError, ValueError) as e:
                raise usage.UsageError(f"--admin-token-file: {e}")
        elif parse_endpoint(self["admin"]).on_the_network:
            raise usage.UsageError("the admin API on a network endpoint needs "
                                   "--admin-token-file: anyone who can connect could "
                                   "read hostnic's state and release NICs")
        if not os.path.isdir(os.path.join(self["sysctl-dir"], "ipv4", "conf")):
            raise usage.UsageError(f"--sysctl-dir {self['sysctl-dir']!r} does not hold the "
                                   f"host's net sysctls (ipv4/conf/...)")
        if self["cni"] and parse_endpoint(self["cni"]).on_the_network:
            raise usage.UsageError("--cni must be a unix socket: the CNI plugin hands "
                                   "namespaces over as descriptors, which only a unix "
                                   "socket carries")
        for option in ("socket", "admin", "cni"):
            if not self[option]:
                continue
            try:
                serverFromString(reactor, self[option])
            except IndexError:
                raise usage.UsageError(f"--{option} {self[option]!r}: systemd passed no "
                                       f"socket of that number (is the .socket unit "
                                       f"running?)") from None
            except (ValueError, KeyError, TypeError) as e:
                raise usage.UsageError(f"--{option} {self[option]!r} is not a server "
                                       f"endpoint: {e}") from None


@attrs.define(eq=False)
class HostnicService(service.Service):
    """Serves one daemon (see ``hostnic.daemon.compose``) on the driver and admin
    endpoints, and tells systemd how it goes."""

    reactor: Any
    daemon: Daemon
    ports: list[IListeningPort] = attrs.field(factory=list)
    sites: dict[str, Any] = attrs.field(factory=dict)  # GuardedSite or CNIFactory
    watchdog: LoopingCall | None = None
    log = Logger()

    @property
    def endpoints(self) -> Mapping[str, str]:
        return self.daemon.settings.endpoints

    def startService(self) -> None:
        service.Service.startService(self)
        self._feed_watchdog()
        # Listen at once: dockerd must never find the socket missing. Requests
        # that touch state wait inside the core for the reconciliation.
        listens = []
        self.sites = self.daemon.sites()
        for name, site in self.sites.items():
            description = self.endpoints[name]
            sockets.prepare(description)
            listening = server_endpoint(self.reactor, description).listen(site)
            listening.addCallback(self._listening, name)
            listens.append(listening)
        # Readiness for Type=notify: both ports listen (requests that need the
        # reconciliation wait for it inside the core).
        DeferredList(listens, fireOnOneErrback=True, consumeErrors=True).addCallbacks(
            lambda _: notify("READY=1\nSTATUS=serving"),
            lambda failure: self._fatal(failure.value.subFailure))
        Deferred.fromCoroutine(self._start()).addErrback(self._fatal)
        state = self.daemon.core.state
        self.log.info("hostnic starting: driver on {socket}, state in {state_dir}, "
                      "{networks} networks and {claims} claims recorded",
                      socket=self.endpoints["driver"], state_dir=self.daemon.settings.state_dir,
                      networks=len(state.networks), claims=len(state.claims))

    async def _start(self) -> None:
        await self.daemon.start()
        settle_garbage_collector()

    def _listening(self, port: IListeningPort, name: str) -> None:
        self.ports.append(port)
        address = port.getHost()
        self.log.info("{api} API listening on {address}", api=name, address=address)
        if name == "admin" and self.daemon.settings.admin_token is None \
                and not isinstance(address, UNIXAddress):
            # Whatever the endpoint string said (systemd may hand over a TCP socket).
            raise HostnicError(f"the admin API listens on the network ({address}) without "
                               f"--admin-token-file: anyone who can connect could read "
                               f"hostnic's state and release NICs")

    def _feed_watchdog(self) -> None:
        """systemd's WatchdogSec=: ping from the reactor, so a wedged reactor
        stops the pings and systemd restarts hostnic."""
        interval = watchdog_interval()
        if interval is not None:
            self.watchdog = LoopingCall(notify, "WATCHDOG=1")
            self.watchdog.clock = self.reactor
            self.watchdog.start(interval / 2, now=True)

    def _fatal(self, failure: Failure) -> None:
        if failure.check(HostnicError, CannotListenError, OSError):
            # A sentence is the whole story; a traceback only for a bug.
            self.log.critical("hostnic cannot start: {error}", error=failure.getErrorMessage())
        else:
            self.log.critical("hostnic cannot start: {error}", error=failure.getErrorMessage(),
                              log_failure=failure)
        self.reactor.addSystemEventTrigger("after", "shutdown", os._exit, 1)
        if self.reactor.running:
            self.reactor.stop()
        else:  # a listen refused before twistd ran the reactor
            self.reactor.callWhenRunning(self.reactor.stop)

    def stopService(self) -> Any:
        service.Service.stopService(self)
        notify("STOPPING=1")
        if self.watchdog is not None and self.watchdog.running:
            self.watchdog.stop()
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        """No new connection; the calls under way finish and are answered
        (dockerd's keep-alive connections close between calls); then the
        daemon's own work, then it stops. Each step is bounded in time."""
        await DeferredList([maybeDeferred(port.stopListening) for port in self.ports])
        drained = DeferredList([site.drain() for site in self.sites.values()])
        try:
            await drained.addTimeout(STOP_GRACE, self.reactor)
        except TimeoutError:
            self.log.warn("calls still under way after {grace:g}s: stopping anyway",
                          grace=STOP_GRACE)
        await self.daemon.stop(STOP_GRACE)


def settle_garbage_collector() -> None:
    """Once started, what is loaded (modules, the inventory) lives as long as
    the process: keep it out of the collector's passes (gc.freeze), and
    collect the young generation less often, so a request does not pay for a
    walk over every object of a host with thousands of links."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 20, 20)
    # A thread back from a syscall (a netlink change, an fdatasync) waits for
    # the GIL up to this long while the reactor computes: keep it short.
    sys.setswitchinterval(0.0005)


def bound_memory(reactor: Any) -> None:
    """Threads only wait on syscalls here (fdatasync, a netlink dump), so a few
    do; and they share malloc's arenas instead of growing one each."""
    reactor.suggestThreadPoolSize(4)
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(-8, 2)  # M_ARENA_MAX: the main arena and one for all threads
    except (OSError, AttributeError):
        pass


def raise_descriptor_limit() -> None:
    """Use the hard limit on open files (systemd's default soft limit is 1,024)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class HostnicServices(service.MultiService):
    """hostnic's service tree. Joining twistd's application, it offers
    hostnic's own text log observer, which twistd uses unless ``--logger``
    names another (its default one cost ~0.3 ms of the reactor per call)."""

    def setServiceParent(self, parent: Any) -> Any:
        if isinstance(parent, Componentized) and \
                parent.getComponent(ILogObserver, None) is None:
            parent.setComponent(ILogObserver, text_observer())
        return super().setServiceParent(parent)


def makeService(options: Options) -> service.IService:
    from twisted.internet import reactor
    record.SYSCTL_ROOT = options["sysctl-dir"]
    settings = Settings(state_dir=options["state-dir"],
                        endpoints={"driver": options["socket"], "admin": options["admin"],
                                   **({"cni": options["cni"]} if options["cni"] else {})},
                        admin_token=options["admin-token"],
                        client_timeout=options["client-timeout"])
    try:
        # First the host, then its state: a second hostnic must not even read it.
        claim_host(reactor, describe_self(options["socket"], options["state-dir"]))
        # Read before serving: a damaged state file stops the start with one
        # sentence, never a traceback, and the file is left as it is.
        daemon = build(settings, kernel_ports(reactor, options["netns-dir"]))
    except HostnicError as e:
        raise SystemExit(f"hostnic cannot start: {e.message}") from None
    raise_descriptor_limit()
    bound_memory(reactor)
    top = HostnicServices()
    HostnicService(reactor, daemon).setServiceParent(top)
    return top
