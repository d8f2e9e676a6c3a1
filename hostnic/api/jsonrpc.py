"""A JSON-RPC 2.0 dispatcher: requests, batches and notifications, with the
spec's error objects. It knows nothing of hostnic: methods are registered with
their parameters, and one mapping turns exceptions into error objects."""

from __future__ import annotations

import inspect
import math
from typing import Any, Awaitable, Callable

import attrs
from twisted.logger import Logger

from hostnic.api.http import dumps, loads
from hostnic.strictjson import NotJSON
from hostnic.errors import HostnicError
from hostnic.sentences import capped, quoted

PARSE_ERROR, INVALID_REQUEST, METHOD_NOT_FOUND = -32700, -32600, -32601
INVALID_PARAMS, INTERNAL_ERROR = -32602, -32603

Method = Callable[..., Awaitable[Any]]
MAX_BATCH = 64  # a batch is answered in one response: bound the work one body asks for
MAX_ID = 128  # characters of a string id (it is echoed)


class RPCError(Exception):
    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code, self.message, self.data = code, message, data


def _error(code: int, message: str, request_id: Any = None, data: Any = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": capped(message)}
    if data is not None:
        error["data"] = data
    return {"jsonrpc": "2.0", "error": error, "id": request_id}


@attrs.define
class Dispatcher:
    """``error_codes`` maps HostnicError subclasses to application codes (-32000 down)."""

    error_codes: dict[type[HostnicError], int] = attrs.field(factory=dict)
    methods: dict[str, Method] = attrs.field(factory=dict)
    log = Logger()

    def register(self, name: str, method: Method) -> None:
        self.methods[name] = method

    async def handle(self, raw: bytes) -> bytes | None:
        """The answer body for a request body; None when nothing is owed
        (notifications only)."""
        try:
            payload = loads(raw)
        except NotJSON as e:
            return dumps(_error(PARSE_ERROR, f"Parse error: {e}"))
        if isinstance(payload, list):
            if not payload:
                return dumps(_error(INVALID_REQUEST, "Invalid Request: empty batch"))
            if len(payload) > MAX_BATCH:
                return dumps(_error(INVALID_REQUEST, f"Invalid Request: a batch of "
                                                     f"{len(payload)} requests; at most "
                                                     f"{MAX_BATCH} are served in one"))
            answers = [a for a in [await self._one(item) for item in payload] if a is not None]
            return dumps(answers) if answers else None
        answer = await self._one(payload)
        return dumps(answer) if answer is not None else None

    async def _one(self, request: Any) -> dict[str, Any] | None:
        if not isinstance(request, dict):
            return _error(INVALID_REQUEST, "Invalid Request: not an object")
        request_id = request.get("id")
        if not _valid_id(request_id):
            return _error(INVALID_REQUEST, f"Invalid Request: id must be null, a finite number "
                                           f"or a string of at most {MAX_ID} characters")
        if request.get("jsonrpc") != "2.0":
            return _error(INVALID_REQUEST, 'Invalid Request: "jsonrpc" must be "2.0"', request_id)
        name = request.get("method")
        if not isinstance(name, str):
            return _error(INVALID_REQUEST, "Invalid Request: method must be a string", request_id)
        params = request.get("params", [])
        if not isinstance(params, (list, dict)):
            return _error(INVALID_REQUEST, "Invalid Request: params must be an array or an object",
                          request_id)
        notification = "id" not in request
        try:
            result = await self._call(name, params)
            answer = {"jsonrpc": "2.0", "result": result, "id": request_id}
        except RPCError as e:
            answer = _error(e.code, e.message, request_id, e.data)
        except HostnicError as e:
            answer = _error(self._code(e), e.message, request_id)
        except Exception as e:
            self.log.failure("admin method {method} failed", method=name)
            answer = _error(INTERNAL_ERROR, f"Internal error: {type(e).__name__}: {e}", request_id)
        return None if notification else answer

    def _code(self, error: HostnicError) -> int:
        for kind in type(error).__mro__:
            if kind in self.error_codes:
                return self.error_codes[kind]
        return -32000

    async def _call(self, name: str, params: list[Any] | dict[str, Any]) -> Any:
        method = self.methods.get(name)
        if method is None:
            raise RPCError(METHOD_NOT_FOUND, f"Method not found: {quoted(name)}; known methods: "
                                             f"{', '.join(sorted(self.methods))}")
        signature = inspect.signature(method)
        try:
            bound = (signature.bind(*params) if isinstance(params, list)
                     else signature.bind(**params))
        except TypeError as e:
            raise RPCError(INVALID_PARAMS, f"Invalid params for {name}: {capped(str(e), 200)}") from None
        for key, value in bound.arguments.items():
            # Annotations are strings here (postponed evaluation); bool is no int.
            expected = signature.parameters[key].annotation
            if expected in ("str", "int") and type(value).__name__ != expected:
                raise RPCError(INVALID_PARAMS, f"Invalid params for {name}: {key} must be "
                                               f"a{'n' if expected == 'int' else ''} {expected}")
        return await method(*bound.args, **bound.kwargs)


def _valid_id(request_id: Any) -> bool:
    if request_id is None:
        return True
    if isinstance(request_id, bool):
        return False
    if isinstance(request_id, int):
        return abs(request_id) < 2 ** 63
    if isinstance(request_id, float):
        return math.isfinite(request_id)
    return isinstance(request_id, str) and len(request_id) <= MAX_ID
