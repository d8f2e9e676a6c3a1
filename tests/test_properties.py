"""Property-based tests: random dockerd-like histories against the core.

Hypothesis draws a history: endpoints created, joined, moved into their
containers, left, moved back and deleted as dockerd does it, with retried
and duplicated calls, calls running concurrently (every host call and every
store write is a scheduler point, and Hypothesis picks which one goes on),
containers that change their NIC's MAC, namespaces that die without dockerd
(the kernel hands the NIC back as ``eth0``), a disk that fills up and frees
again, time passing (background retries) and crashes (the core is rebuilt
from what is on disk; calls in flight are lost and dockerd retries them).

Checked throughout: no NIC is claimed twice or pooled twice, in memory or on
disk; no NIC is changed while the disk holds no record of its original
state; every Join answered OK names a link that exists. Checked at the end,
once dockerd has finished with every endpoint: every NIC is home exactly as
it was before the history began, and no claim is left.
"""

from __future__ import annotations

import gc
import hashlib
import os
from typing import Any

import attrs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from hostnic.api.libnetwork import define_network
from hostnic.core.commands import EndpointKey, LendNic
from hostnic.core.owner import Core
from hostnic.errors import HostError, HostnicError
from hostnic.state.model import Phase
from tests.helpers import claim_request
from tests.fakes import DeadHost, DeadStore, FakeHost, run_now
from tests.helpers import NET, NET2, CoreTestCase, endpoint_body, network_body
from tests.sched import Scheduler, gated

EXAMPLES = int(os.environ.get("HOSTNIC_PROPERTY_EXAMPLES", "150"))
RANDOM = bool(os.environ.get("HOSTNIC_PROPERTY_RANDOM"))  # CI replays the same histories
STEPS = 60
POOLS = {NET: ["52:54:00:00:00:01", "52:54:00:00:00:02"], NET2: ["52:54:00:00:00:03"]}


@attrs.define
class Endpoint:
    """dockerd's side of one endpoint."""

    id: str
    network: str
    sandbox: str
    stage: str = "creating"  # creating created joining joined inside leaving left back
    #                          deleting done, or failed (Join refused: delete it)
    src: str | None = None
    inflight: str | None = None  # the call dockerd waits on
    token: int = 0  # which copy of it dockerd still reads the answer of
    lost: bool = False  # its answer was lost in a crash: dockerd will retry it


NEXT_CALL = {"creating": "create", "created": "join", "joining": "join", "inside": "leave",
             "leaving": "leave", "back": "delete", "deleting": "delete", "failed": "delete"}


class History:
    def __init__(self, case: CoreTestCase, data: st.DataObject) -> None:
        self.case, self.data = case, data
        self.host: FakeHost = case.host
        self.endpoints: list[Endpoint] = []
        self.serial = 0
        self.problems: list[str] = []
        self.violations = case.watch_record_before_touch()
        self.full = False
        self.scheduler = Scheduler()
        self.trace: list[str] = []  # what happened, for a failure's message
        self.attach(case.core)

    # -- the core, its store and its scheduler ---------------------------

    def attach(self, core: Core) -> None:
        """Run ``core`` (and its one store) under the scheduler."""
        self.core = core
        self.host.pause = self.scheduler.point
        self.case.threads.run = gated(self.scheduler)
        self.case.disk.space = 0 if self.full else None

    def crash(self) -> None:
        """The process dies: what it was doing stops, only the disk and the
        kernel remain. Its coroutines are unwound against dead stubs (every
        host call and save fails), so none of them touches the live host
        again, then a new core starts from what is on disk."""
        dead = self.core
        dead.retries.stop()
        dead.retries.reactor = None
        dead.host = dead.lender.host = DeadHost()  # type: ignore[assignment]
        dead.ledger.store = DeadStore()
        dead.store = DeadStore()
        waiting, self.scheduler = self.scheduler.waiting, Scheduler()
        for _, d in waiting:
            d.errback(HostError("this process has died"))
        for endpoint in self.endpoints:
            if endpoint.inflight is not None:
                endpoint.lost = True  # dockerd saw the connection drop
                endpoint.inflight = None
        self.host.pause = None
        self.case.threads.run = run_now  # the new life's start runs through
        self.case.core = self.case.new_core()  # reconciles from what is on disk
        self.attach(self.case.core)

    # -- dockerd's calls -------------------------------------------------

    def call(self, endpoint: Endpoint, method: str) -> None:
        ref = EndpointKey(endpoint.network, endpoint.id)
        coroutine: Any
        if method == "create":
            coroutine = self.core.claim(
                claim_request(endpoint_body(endpoint.id, endpoint.network)))
        elif method == "join":
            self.host.live_namespaces.add(endpoint.sandbox)  # dockerd made the sandbox
            coroutine = self.core.lend(LendNic(ref, endpoint.sandbox))
        elif method == "leave":
            coroutine = self.core.leave(ref)
        else:
            coroutine = self.core.give_back(ref)
        endpoint.inflight, endpoint.lost = method, False
        endpoint.token += 1
        Deferred.fromCoroutine(coroutine).addBoth(
            self.answered, endpoint, method, self.core, endpoint.token)

    def answered(self, result: Any, endpoint: Endpoint, method: str, core: Core,
                 token: int) -> None:
        if core is not self.core:
            return  # a process that has died answers nobody
        failed = isinstance(result, Failure)
        self.trace.append(f"{method} {endpoint.id[:4]} -> "
                          f"{result.getErrorMessage() if failed else result}")
        if failed and not result.check(HostnicError):
            self.problems.append(f"{method} of {endpoint.id[:4]}: {result.getTraceback()}")
        if token != endpoint.token or endpoint.inflight != method:
            return  # dockerd dropped that connection: nobody reads this answer
        endpoint.inflight = None
        if method == "join" and not failed:
            if result.src_name not in {l.name for l in self.host.home()}:
                self.problems.append(f"Join answered {result.src_name}, which does not exist")
        if method == "create":
            endpoint.stage = "done" if failed else "created"
        elif method == "join":
            endpoint.stage = "failed" if failed else "joined"
            endpoint.src = None if failed else result.src_name
        elif method == "leave":
            endpoint.stage = "left"  # dockerd ignores Leave's errors
        else:
            endpoint.stage = "done"  # and DeleteEndpoint's
            self.host.live_namespaces.discard(endpoint.sandbox)

    # -- actions Hypothesis chooses from --------------------------------

    def new_endpoint(self) -> None:
        self.serial += 1
        network = self.data.draw(st.sampled_from(sorted(POOLS)), label="network")
        # Docker's ids are random: make them differ from the first character.
        endpoint_id = hashlib.sha256(str(self.serial).encode()).hexdigest()
        endpoint = Endpoint(endpoint_id, network, f"/run/docker/netns/sb{self.serial}")
        self.endpoints.append(endpoint)
        self.call(endpoint, "create")

    def next_call(self, endpoint: Endpoint) -> None:
        self.call(endpoint, NEXT_CALL[endpoint.stage])
        if endpoint.stage in ("created", "inside", "back"):
            endpoint.stage = {"created": "joining", "inside": "leaving",
                              "back": "deleting"}[endpoint.stage]

    def nic_of(self, endpoint: Endpoint) -> Any:
        claim = self.core.state.claims.get(endpoint.id)
        return claim

    def move_in(self, endpoint: Endpoint) -> None:
        assert endpoint.src is not None
        if endpoint.src not in {l.name for l in self.host.home()}:
            self.problems.append(f"dockerd found no {endpoint.src} to move in")
            endpoint.stage = "failed"
            return
        self.host.dockerd_moves_in(endpoint.src, endpoint.sandbox, "192.168.7.10")
        endpoint.stage = "inside"

    def inside(self, endpoint: Endpoint) -> Any:
        return next((l for l in self.host.links.values() if l.where == endpoint.sandbox), None)

    def move_back(self, endpoint: Endpoint) -> None:
        link = self.inside(endpoint)
        if link is not None:
            assert endpoint.src is not None
            self.host.dockerd_moves_back(link, endpoint.src)
        endpoint.stage = "back"

    def namespace_dies(self, endpoint: Endpoint) -> None:
        link = self.inside(endpoint)
        if link is not None:
            self.host.kernel_returns(link)

    def step(self) -> None:
        if self.scheduler.waiting:
            label = self.scheduler.step(self.data.draw(
                st.integers(0, len(self.scheduler.waiting) - 1), label="step"))
            self.trace.append(f"  step {label}")

    def set_disk(self, full: bool) -> None:
        # The same store (one writer, as in the daemon), on a disk now full or not.
        self.full = full
        self.case.disk.space = 0 if full else None

    def act(self) -> None:
        waiting = [e for e in self.endpoints if e.inflight is None and e.stage in NEXT_CALL]
        busy = [e for e in self.endpoints if e.inflight is not None]
        joined = [e for e in self.endpoints if e.stage == "joined" and e.inflight is None]
        contained = [e for e in self.endpoints if self.inside(e) is not None]
        left = [e for e in self.endpoints if e.stage == "left"]
        choices = ["step"] * 6 + ["new"]
        choices += ["call"] * 3 * bool(waiting) + ["duplicate"] * bool(busy)
        choices += ["move in"] * bool(joined) + ["move back"] * bool(left)
        choices += ["change mac", "namespace dies"] * bool(contained)
        choices += ["crash", "disk", "time", "create network again"]
        action = self.data.draw(st.sampled_from(choices), label="action")
        if action != "step":
            self.trace.append(action)
        if action == "step":
            self.step()
        elif action == "new":
            if len(self.endpoints) < 8:
                self.new_endpoint()
        elif action == "call":
            self.next_call(self.data.draw(st.sampled_from(waiting), label="endpoint"))
        elif action == "duplicate":
            endpoint = self.data.draw(st.sampled_from(busy), label="endpoint")
            assert endpoint.inflight is not None
            self.call(endpoint, endpoint.inflight)  # the first one's answer is lost: again
        elif action == "move in":
            self.move_in(self.data.draw(st.sampled_from(joined), label="endpoint"))
        elif action == "move back":
            self.move_back(self.data.draw(st.sampled_from(left), label="endpoint"))
        elif action == "change mac":
            link = self.inside(self.data.draw(st.sampled_from(contained), label="endpoint"))
            link.mac = f"02:00:00:00:99:{self.serial % 256:02x}"
        elif action == "namespace dies":
            self.namespace_dies(self.data.draw(st.sampled_from(contained), label="endpoint"))
        elif action == "crash":
            self.crash()
        elif action == "disk":
            self.set_disk(not self.full)
        elif action == "time":
            self.case.reactor.advance(self.data.draw(st.sampled_from([1, 5, 30]), label="s"))
        elif action == "create network again":
            network = self.data.draw(st.sampled_from(sorted(POOLS)), label="network")
            Deferred.fromCoroutine(self.core.define_network(define_network(network_body(
                network, hostnic_mac=",".join(POOLS[network]))))).addErrback(
                    lambda f: f.trap(HostnicError))  # a full disk may refuse it
        self.check()

    # -- invariants --------------------------------------------------------

    def check(self) -> None:
        for state, where in ((self.core.state, "memory"), (self.case.durable(), "disk")):
            keys = [c.nic.key for c in state.claims.values()]
            if len(keys) != len(set(keys)):
                self.problems.append(f"a NIC claimed twice on {where}: {sorted(keys)}")
            pooled = [n.key for network in state.networks.values() for n in network.pool]
            if len(pooled) != len(set(pooled)):
                self.problems.append(f"a NIC pooled twice on {where}")
        self.problems += self.violations
        self.violations.clear()
        assert not self.problems, "\n".join(self.problems + ["", "history:"] + self.trace)

    def finish(self) -> None:
        """dockerd finishes with every endpoint, hostnic keeps running."""
        self.set_disk(False)
        self.scheduler.only = lambda label: False  # from now on nothing waits
        self.scheduler.run(lambda n: 0)
        for _ in range(20):
            for endpoint in self.endpoints:
                if endpoint.inflight is not None:
                    continue
                if endpoint.stage == "joined":
                    self.move_in(endpoint)
                if endpoint.stage == "left":
                    self.move_back(endpoint)
                if endpoint.stage in NEXT_CALL:
                    self.next_call(endpoint)
            self.case.reactor.advance(60)
            self.check()
            if all(e.stage == "done" for e in self.endpoints):
                break
        for endpoint in self.endpoints:
            self.namespace_dies(endpoint)  # a NIC dockerd never got back
        self.case.reactor.advance(600)
        self.check()


class PropertyTests(CoreTestCase):
    @settings(max_examples=EXAMPLES, deadline=None, derandomize=not RANDOM,
              suppress_health_check=list(HealthCheck))
    @given(st.data())
    def test_random_histories_keep_every_promise(self, data: st.DataObject) -> None:
        self.setUp()  # a fresh host, disk and core for every example
        self.before = {}
        for i, (network, macs) in enumerate(sorted(POOLS.items())):
            for j, mac in enumerate(macs):
                link = self.host.add(f"ens{4 + 2 * i + j}", mac, perm=mac.replace("52", "aa", 1),
                                     mtu=data.draw(st.sampled_from([1500, 9000])),
                                     up=data.draw(st.booleans()))
                self.before[mac] = link.state()
            self.create_network(network, hostnic_mac=",".join(macs))
        history = History(self, data)
        for _ in range(data.draw(st.integers(1, STEPS), label="length")):
            history.act()
        history.finish()
        # A claim never joined may outlive dockerd's Delete if that Delete met a
        # full disk and hostnic then crashed before it could retry: its NIC was
        # never touched, and the operator's release hands it back.
        for claim in list(self.core.state.claims.values()):
            self.assertEqual(claim.phase, Phase.CREATED, claim)
            self.call(self.core.release(claim.nic))
        self.assertEqual(self.durable().claims, {})
        after = {mac: self.host.by_perm(mac.replace("52", "aa", 1)) for mac in self.before}
        self.assertEqual({mac: (link.where, link.state()) for mac, link in after.items()},
                         {mac: ("host", state) for mac, state in self.before.items()})
        gc.collect()  # an unhandled failure in a background task is logged once collected
        self.assertEqual(self.flushLoggedErrors(), [])  # no failure in the background either
