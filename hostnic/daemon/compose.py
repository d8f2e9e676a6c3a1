"""The composition root: the one place hostnic's object graph is built.

``twistd hostnic`` (``hostnic.daemon.tap``) builds its daemon here, and so does every
test that needs a core: they differ only in the ports handed in (the host,
the clocks, the threads, the file system), never in how the store, ledger,
core and APIs are put together. The store that loaded the state is the store
that serves it, so its bookkeeping (the journal's generation, its record
count, a torn tail) is the disk's, whatever the previous life left.
"""

from __future__ import annotations

import os
import time
from functools import partial
from typing import Any, Callable, Mapping

import attrs
from twisted.internet.threads import deferToThread, deferToThreadPool
from twisted.python.threadpool import ThreadPool

from hostnic.api.admin import AdminAPI, ServiceInfo
from hostnic.api.cni import CNIAPI, OpenSandbox
from hostnic.api.cnisocket import CNIFactory
from hostnic.api.driver import DriverAPI
from hostnic.api.http import GuardedSite, Limits, driver_refusal, jsonrpc_refusal
from hostnic.core.owner import Core
from hostnic.core.ports import HostPort
from hostnic.kernel.host import NetlinkHost
from hostnic.kernel.monitor import LinkMonitor
from hostnic.state.store import COMPACT_EVERY, RunInThread, StateStore

DRIVER_CONNECTIONS = 512  # dockerd opens one per call; hundreds of parallel starts fit
ADMIN_CONNECTIONS = 64
CNI_CONNECTIONS = 64  # one per runtime call, each answered in milliseconds
# Driver calls run at most this many at once (the rest wait, whole, in order):
# they share one netlink thread and one journal, so more at once only makes
# the reactor's turns longer, and the admin API waits behind them (its
# status p99 under 32 callers: 34 ms uncapped, 12 ms at 6, 20 ms at 12).
DRIVER_CALLS_AT_ONCE = 6


@attrs.frozen
class Settings:
    """What the operator chose (twistd's options, or a test's)."""

    state_dir: str
    endpoints: Mapping[str, str] = attrs.field(factory=dict)  # "driver", "admin": as given
    admin_token: bytes | None = None
    client_timeout: float = 30.0  # seconds a client has to send a whole request
    compact_every: int = COMPACT_EVERY


@attrs.frozen
class Ports:
    """Everything outside hostnic's own code that the daemon talks to."""

    reactor: Any  # IReactorTime: background retries
    host: HostPort  # the host network namespace
    run_in_thread: RunInThread  # the store's writes (fsync) off the reactor
    clock: Callable[[], float] = time.time  # the wall clock of claims and leases
    fs: Any = os  # the store's file operations (hostnic.state.store.FileSystem)
    # The namespace a CNI shim hands over (its descriptors), as the host's handle.
    open_sandbox: OpenSandbox | None = None


@attrs.define(eq=False)
class Daemon:
    """One life of hostnic: built from the state directory, started, stopped
    (or simply dropped, as a crash drops it)."""

    settings: Settings
    ports: Ports
    store: StateStore
    core: Core
    driver: DriverAPI
    admin: AdminAPI
    cni: CNIAPI

    @property
    def host(self) -> HostPort:
        return self.ports.host

    async def start(self) -> None:
        """Watch the host, then reconcile the recorded claims with it; requests
        that touch state wait inside the core until this is done."""
        await self.host.start()
        await self.core.start()

    async def stop(self, grace: float = 10.0) -> None:
        """Let the work under way finish (at most ``grace`` seconds: what a
        stop cuts short, a crash could too, and the state says how to go on),
        then stop watching the host and close the store."""
        self.core.retries.stop()
        try:
            await self.core.locks.idle().addTimeout(grace, self.ports.reactor)
        except TimeoutError:
            pass
        finally:
            self.halt()

    def halt(self) -> None:
        """Stop at once (as a crash would, but closing what is open)."""
        self.core.retries.stop()
        self.host.stop()  # (its netlink thread done first: it may be using a held namespace)
        self.core.attachments.let_go()
        self.store.close()

    def sites(self, reactor: Any = None) -> dict[str, Any]:
        """What serves each endpoint: the HTTP sites of the driver and the
        admin API, and the CNI endpoint's factory if it has one (a clock for
        their deadlines, if not the global reactor's)."""
        timeout = self.settings.client_timeout
        admin = self.admin
        driver = GuardedSite(self.driver.app.resource(), driver_refusal,
                             Limits(max_connections=DRIVER_CONNECTIONS, request_seconds=timeout,
                                    max_in_flight=DRIVER_CALLS_AT_ONCE), reactor=reactor)
        served: dict[str, Any] = {
            "driver": driver,
            "admin": GuardedSite(admin.app.resource(), jsonrpc_refusal,
                                 Limits(max_connections=ADMIN_CONNECTIONS,
                                        request_seconds=timeout),
                                 authorize=admin.authorized if admin.token else None,
                                 reactor=reactor)}
        if self.settings.endpoints.get("cni"):
            if reactor is None:
                from twisted.internet import reactor as default
                reactor = default
            # CNI calls take their places among the driver's: the same netlink
            # thread and journal serve both, and the admin API stays prompt.
            served["cni"] = CNIFactory(self.cni, reactor, max_connections=CNI_CONNECTIONS,
                                       request_seconds=timeout, admission=driver)
        return served


def build(settings: Settings, ports: Ports) -> Daemon:
    """Read the state directory and assemble a daemon over it (nothing is
    served or started yet). A damaged state raises StoreError, a sentence."""
    store = StateStore(settings.state_dir, ports.run_in_thread, fs=ports.fs,
                       compact_every=settings.compact_every)
    state = store.load()
    core = Core(host=ports.host, store=store, state=state, clock=ports.clock,
                reactor=ports.reactor)
    driver = DriverAPI(core, core.events)
    admin = AdminAPI(core, ServiceInfo(pid=os.getpid(), started_at=ports.clock(),
                                       state_dir=settings.state_dir,
                                       endpoints=dict(settings.endpoints)),
                     token=settings.admin_token, clock=ports.clock)
    cni = CNIAPI(core, ports.open_sandbox or _no_sandboxes)
    return Daemon(settings, ports, store, core, driver, admin, cni)


def _no_sandboxes(key: str, fds: Any) -> Any:
    from hostnic.errors import HostError
    for fd in fds:
        os.close(fd)
    raise HostError("this hostnic takes no namespaces handed over")


def kernel_ports(reactor: Any, netns_dir: str | None = None) -> Ports:
    """The daemon's real ports: this network namespace through netlink (an
    event-driven inventory read on the reactor, reads in the reactor's
    threads, every change in one netlink thread of its own, in order) and
    the state directory through ``os``."""
    monitor = LinkMonitor(reactor, deferToThread)
    changes = ThreadPool(minthreads=1, maxthreads=1, name="hostnic-netlink")
    host = NetlinkHost(monitor, deferToThread, partial(deferToThreadPool, reactor, changes),
                       netns_dir=netns_dir, threads=changes)
    return Ports(reactor=reactor, host=host, run_in_thread=deferToThread,
                 open_sandbox=_open_handed)


def _open_handed(key: str, fds: Any) -> Any:
    # (the kernel's changes load pyroute2's message classes: on first use)
    from hostnic.kernel.sandbox import open_handed
    return open_handed(key, fds)
