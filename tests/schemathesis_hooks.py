"""Schemathesis hooks of tests/test_openapi_fuzz.py (loaded with SCHEMATHESIS_HOOKS=<this file>).

Schemathesis generates what the OpenAPI document describes, and so never what Python's JSON
parser reads beyond strict JSON (NaN, Infinity, 1e400, lone surrogates), nor a forged `cursor`.
These hooks add both classes (tests/strict_json.py) to every operation:

- `flatmap_body`: about half the bodies get one such value at a random place (a field, a new
  field, an item or key nested anywhere inside, or the whole body);
- `flatmap_query`: about half the queries of an operation with a `cursor` carry a forged one;
- a JSON serializer that writes those values as the tokens a client would send;
- `documented_error_body`: every 4xx answers JSON with `detail`, every 422 the one shape of
  every 422 (a list of {loc, msg, type}, and a `code`).

The run's own `not_a_server_error` check then says that none of it reaches a 5xx.
"""

from __future__ import annotations

from typing import Any

import schemathesis
from hypothesis import strategies as st

from tests.strict_json import FORGED_CURSOR, dumps, poisoned


@schemathesis.hook
def flatmap_body(ctx: Any, body: Any) -> st.SearchStrategy[Any]:
    return st.one_of(st.just(body), poisoned(body))


@schemathesis.hook
def flatmap_query(ctx: Any, query: Any) -> st.SearchStrategy[Any]:
    operation = ctx.operation
    if operation is None or "cursor" not in operation.query or not isinstance(query, dict | None):
        return st.just(query)
    forged = FORGED_CURSOR.map(lambda cursor: {**(query or {}), "cursor": cursor})
    return st.one_of(st.just(query), forged)


@schemathesis.serializer("application/json")
def json_with_tokens(ctx: Any, value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    return dumps(value).encode()


@schemathesis.check
def documented_error_body(ctx: Any, response: Any, case: Any) -> None:
    """A 4xx answers JSON with `detail`; a 422 the one shape of every 422 (app/api/errors.py)."""
    if not 400 <= response.status_code < 500:
        return
    body = response.json()
    assert isinstance(body, dict) and "detail" in body, f"no `detail` in {body!r}"
    if response.status_code != 422:
        return
    assert isinstance(body.get("code"), str), f"422 without a `code`: {body!r}"
    assert isinstance(body["detail"], list) and body["detail"], f"422 `detail`: {body!r}"
    for item in body["detail"]:
        assert isinstance(item, dict), f"422 detail item: {item!r}"
        assert isinstance(item.get("loc"), list), f"422 without `loc`: {item!r}"
        assert isinstance(item.get("msg"), str), f"422 without `msg`: {item!r}"
        assert isinstance(item.get("type"), str), f"422 without `type`: {item!r}"
