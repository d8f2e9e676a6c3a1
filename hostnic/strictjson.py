"""JSON as hostnic reads it, whoever wrote it (a request body, the state
file): no NaN or Infinity, and nesting bounded by the interpreter (too deep
is an error with a sentence, never a RecursionError)."""

from __future__ import annotations

import json
from typing import Any


class NotJSON(ValueError):
    """Not a JSON document hostnic will read; ``deep`` if it was nested too
    deeply, else ``detail`` says what is wrong."""

    def __init__(self, detail: str, deep: bool = False) -> None:
        super().__init__(detail)
        self.detail, self.deep = detail, deep


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def loads(raw: bytes) -> Any:
    try:
        return json.loads(raw, parse_constant=_no_constants)
    except RecursionError:
        raise NotJSON("nested too deeply", deep=True) from None
    except (ValueError, UnicodeDecodeError) as e:
        raise NotJSON(str(e)) from None
