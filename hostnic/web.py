"""A twisted.web Site whose every answer is JSON, even when something fails
below the routes (where Twisted would render an HTML 500 page)."""

from __future__ import annotations

import json
from typing import Any, Callable

from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import server
from twisted.web.resource import IResource

log = Logger()


def driver_error(message: str) -> bytes:
    return json.dumps({"Err": message}).encode()


def jsonrpc_error(message: str) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": None,
                       "error": {"code": -32603, "message": f"Internal error: {message}"}}).encode()


def json_site(resource: IResource, error_body: Callable[[str], bytes]) -> server.Site:
    class JSONRequest(server.Request):
        def getRequestHostname(self) -> bytes:
            # HTTP/1.0 without Host over a unix socket: Twisted would look up
            # UNIXAddress.host and fail before any route runs.
            try:
                hostname: bytes = super().getRequestHostname()
                return hostname
            except AttributeError:
                return b"localhost"

        def processingFailed(self, reason: Failure) -> Any:
            log.failure("request {path} failed", reason, path=self.path)
            body = error_body(f"hostnic failed to process the request "
                              f"({getattr(reason.type, '__name__', 'error')}); see the hostnic log")
            if not self.startedWriting:
                self.setResponseCode(500)
                self.setHeader(b"Content-Type", b"application/json")
                self.setHeader(b"Content-Length", b"%d" % len(body))
                self.write(body)
            self.finish()
            return reason

    site = server.Site(resource)
    site.requestFactory = JSONRequest
    return site
