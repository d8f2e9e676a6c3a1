"""HTTP for both APIs: a twisted.web Site that answers JSON even when
something fails below the routes, and that a hostile or broken client cannot
wear down.

- A body larger than ``max_body`` is refused when its length is announced (or
  as soon as a chunked body passes it), never buffered or spooled to disk.
- Where a token is required, a request without it is refused as soon as its
  headers are in, before any of its body is read.
- Every request must arrive whole within ``request_seconds`` of the
  connection's start or the previous answer: idle and trickling clients are
  dropped.
- At most ``max_connections`` are open per endpoint; past that, new ones are
  closed at once, so the other endpoint (and the process's descriptors) stay
  available.
- A call runs to its end even if its client hangs up (``shielded``), and a
  stop lets the calls under way finish and be answered (``drain``).
- Where ``max_in_flight`` is set, at most that many calls are under way for
  connected clients; the others wait, whole, in arrival order (one whose
  client hangs up while it waits never begins; one whose client hangs up
  while it runs still runs to its end, but no longer holds a place). The
  reactor's turns stay short, so the other endpoint (the admin API) answers
  promptly while many calls run.
"""

from __future__ import annotations

import collections
import io
import json
from typing import Any, Callable, Coroutine, Sequence, TypeVar

import attrs
from twisted.internet.defer import Deferred, succeed
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http, server
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource

from hostnic import strictjson
from hostnic.sentences import capped
from hostnic.strictjson import NotJSON

log = Logger()
Refusal = Callable[[int, str], bytes]  # (HTTP status, message) -> body
T = TypeVar("T")


def shielded(coroutine: Coroutine[Any, Any, T]) -> "Deferred[T]":
    """Run a call's work to its end even when the caller cancels (Klein
    cancels a route's Deferred when its client hangs up): a change half made
    because a client left would be a crash hostnic did to itself. The cancel
    only drops the answer."""
    work = Deferred.fromCoroutine(coroutine)
    answer: Deferred[T] = Deferred()  # no canceller: a cancel never reaches the work
    work.chainDeferred(answer)
    return answer


def loads(raw: bytes) -> Any:
    """A request body's JSON, strictly (``hostnic.strictjson``)."""
    try:
        return strictjson.loads(raw)
    except NotJSON as e:
        raise NotJSON("the request body is nested too deeply" if e.deep
                      else "the request body is not JSON") from None


def dumps(value: Any) -> bytes:
    return json.dumps(value, allow_nan=False).encode()


def driver_refusal(status: int, message: str) -> bytes:
    return dumps({"Err": capped(message)})


def jsonrpc_refusal(status: int, message: str) -> bytes:
    code = -32603 if status >= 500 else -32600
    kind = "Internal error" if status >= 500 else "Invalid Request"
    return dumps({"jsonrpc": "2.0", "id": None,
                  "error": {"code": code, "message": capped(f"{kind}: {message}")}})


@attrs.frozen
class Limits:
    max_body: int = 1 << 20  # dockerd's requests are a few KiB
    max_connections: int = 256
    request_seconds: float = 30.0
    max_in_flight: int | None = attrs.field(
        default=None, validator=attrs.validators.optional(attrs.validators.ge(1)))


class GuardedRequest(server.Request):
    refused = False
    _held: list[bytes] | None = None
    _content_type: Sequence[bytes] | None = None

    def write(self, data: bytes) -> None:
        # An answer is held until finish() and goes out whole, with a
        # Content-Length: no chunked encoding (three writes and a parser
        # state per answer for a kept-alive client), one write to the socket.
        if not self.startedWriting and not self.finished:
            if self._held is None:
                self._held = []
            self._held.append(data)
            return
        super().write(data)

    def finish(self) -> None:
        held, self._held = self._held, None
        if held is None and not self.startedWriting:
            held = []  # an answer without a body: its head still goes out
        if held is not None and not self._disconnected:
            body = b"".join(held)
            if (self.code not in http.NO_BODY_CODES and self.method != b"HEAD"
                    and not self.responseHeaders.hasHeader(b"content-length")):
                self.setHeader(b"Content-Length", b"%d" % len(body))
            super().write(body)
        super().finish()

    def getRequestHostname(self) -> bytes:
        # HTTP/1.0 without Host over a unix socket: Twisted would look up
        # UNIXAddress.host and fail before any route runs.
        try:
            hostname: bytes = super().getRequestHostname()
            return hostname
        except AttributeError:
            return b"localhost"

    def gotLength(self, length: int | None) -> None:
        self.content = io.BytesIO()  # never a temp file: bodies are bounded
        self._received = 0

    def handleContentChunk(self, data: bytes) -> None:
        if self.refused:
            return
        self._received += len(data)
        channel: Any = self.channel
        limit = channel.site.limits.max_body
        if self._received > limit:
            channel.refuse(self, 413, f"the request body is larger than {limit} bytes")
            return
        assert self.content is not None
        self.content.write(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if self.refused:
            return  # answered already; the connection is closing
        channel: Any = self.channel
        site: GuardedSite = channel.site
        site.admit(lambda: self._run(site, command, path, version))

    def _run(self, site: "GuardedSite", command: bytes, path: bytes, version: bytes) -> None:
        if self.channel is None:
            # Its client hung up while it waited: it never began (as if
            # hostnic had stopped before reading it), and its place is free.
            site.release()
            return
        # Its place is free once it is answered or its client is gone (the
        # call itself runs to its end: ``shielded``).
        self.notifyFinish().addBoth(site.release)
        # twisted.web reads a POST's Content-Type to fill ``args`` from a
        # form, through the email package (a third of its own time per call
        # here); both APIs read only JSON bodies, so it is set aside until
        # the route runs.
        self._content_type = self.requestHeaders.getRawHeaders(b"content-type")
        if self._content_type is not None:
            self.requestHeaders.removeHeader(b"content-type")
        super().requestReceived(command, path, version)

    def process(self) -> None:
        if self._content_type is not None:
            self.requestHeaders.setRawHeaders(b"content-type", self._content_type)
        super().process()

    def processingFailed(self, reason: Failure) -> Any:
        log.failure("request {path} failed", reason, path=self.path)
        channel: Any = self.channel
        site: GuardedSite = channel.site
        body = site.refusal(500, f"hostnic failed to process the request "
                                 f"({getattr(reason.type, '__name__', 'error')}); "
                                 f"see the hostnic log")
        if not self.startedWriting:
            self._held = None  # what the route wrote before failing is not the answer
            self.setResponseCode(500)
            self.setHeader(b"Content-Type", b"application/json")
            self.write(body)  # (finish() gives it its Content-Length)
        self.finish()
        return reason


class GuardedChannel(http.HTTPChannel):
    site: "GuardedSite"
    transport: Any
    _deadline: Any = None

    def connectionMade(self) -> None:
        super().connectionMade()
        self.site.open_connections += 1
        self.site.channels.add(self)
        self._start_deadline()

    def _start_deadline(self) -> None:
        self._stop_deadline()
        self._deadline = self.callLater(self.site.limits.request_seconds, self._too_slow)

    def _stop_deadline(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        self.site.note("dropped", "a client that sent no complete request in "
                       f"{self.site.limits.request_seconds:g}s")
        self.transport.abortConnection()

    def allHeadersReceived(self) -> None:
        request = self.requests[-1]
        limit = self.site.limits.max_body
        if self.site.authorize is not None and not self.site.authorize(request):
            self.refuse(request, 401, "this admin endpoint needs Authorization: Bearer <token>")
        elif self.length is not None and self.length > limit:
            self.refuse(request, 413, f"the request body is larger than {limit} bytes")
        else:
            super().allHeadersReceived()

    def refuse(self, request: GuardedRequest | None, status: int, message: str) -> None:
        """Answer now and close, reading nothing more of this request."""
        if request is not None:
            request.refused = True
        self._stop_deadline()
        self.site.note(str(status), message)
        body = self.site.refusal(status, message)
        head = [f"HTTP/1.1 {status} {http.RESPONSES.get(status, b'Error').decode()}",
                "Content-Type: application/json", f"Content-Length: {len(body)}",
                "Connection: close"]
        if status == 401:
            head.append('WWW-Authenticate: Bearer realm="hostnic"')
        self.transport.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        self.transport.loseConnection()

    def _respondToBadRequestAndDisconnect(self) -> None:
        # Twisted's own answer to what it cannot parse (a malformed request
        # line, headers or chunks) is a bare 400; ours says it in JSON.
        self.refuse(None, 400, "the request is not HTTP that hostnic can read")

    def allContentReceived(self) -> None:
        self._stop_deadline()  # the handler's own time is not the client's
        super().allContentReceived()

    def requestDone(self, request: IRequest) -> None:
        if self.site.draining:
            self.persistent = False  # answered: now close
        super().requestDone(request)
        # (A pipelined request already read is under way or waiting its turn:
        # its time is not the client's.)
        if (self.persistent and self.transport is not None
                and not self.transport.disconnecting and not self._handlingRequest):
            self._start_deadline()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._stop_deadline()
        self.site.open_connections -= 1
        self.site.channels.discard(self)
        super().connectionLost(reason)
        self.site.closed()

    @property
    def idle(self) -> bool:
        """Between requests (a keep-alive connection waiting for the next)."""
        return not self.requests


class GuardedSite(server.Site):
    protocol = GuardedChannel  # type: ignore[assignment]  # no HTTP/2 here
    requestFactory = GuardedRequest
    noisy = False  # no "Starting factory" lines

    def __init__(self, resource: IResource, refusal: Refusal, limits: Limits = Limits(),
                 authorize: Callable[[IRequest], bool] | None = None,
                 reactor: Any = None) -> None:
        super().__init__(resource, timeout=limits.request_seconds, reactor=reactor)
        self.refusal = refusal
        self.limits = limits
        self.authorize = authorize
        self.open_connections = 0
        self.in_flight = 0
        self.waiting: collections.deque[Callable[[], None]] = collections.deque()
        self.refused: dict[str, int] = {}
        self.channels: set[GuardedChannel] = set()
        self.draining = False
        self._drained: list[Deferred[None]] = []

    def buildProtocol(self, addr: Any) -> Any:
        if self.open_connections >= self.limits.max_connections:
            self.note("connections", f"{self.open_connections} connections are open, "
                                     f"the most this endpoint serves")
            return None  # the port closes the new connection at once
        return super().buildProtocol(addr)

    def admit(self, run: Callable[[], None]) -> None:
        """Run a whole request now, or once a running one is done."""
        limit = self.limits.max_in_flight
        if limit is not None and self.in_flight >= limit:
            self.waiting.append(run)
            return
        self.in_flight += 1
        run()

    def release(self, result: Any = None) -> None:
        self.in_flight -= 1
        if self.waiting:
            self.in_flight += 1
            # On the next turn: the answer just finished goes out first.
            self.reactor.callLater(0, self.waiting.popleft())

    def note(self, kind: str, what: str) -> None:
        """Count a refusal; log the first of each kind and then every 100th
        (a flood of them must not flood the log)."""
        count = self.refused[kind] = self.refused.get(kind, 0) + 1
        if count == 1 or count % 100 == 0:
            log.warn("refused {what} ({count} so far)", what=what, count=count)

    def log(self, request: Any) -> None:
        pass  # the APIs log each call once, with its outcome

    def drain(self) -> "Deferred[None]":
        """Stop serving without cutting a call short: close the connections
        waiting between requests at once (dockerd's next call then finds the
        socket closed and connects again: with its body), and each other one
        once its answer is sent. Fires when none is open."""
        self.draining = True
        for channel in list(self.channels):
            if channel.idle:
                channel.transport.loseConnection()
            else:
                channel.persistent = False
        if not self.channels:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._drained.append(waiter)
        return waiter

    def closed(self) -> None:
        if self.draining and not self.channels:
            waiters, self._drained = self._drained, []
            for waiter in waiters:
                waiter.callback(None)
