"""Hypothesis strategies for what Python's JSON parser reads but strict JSON cannot carry.

Starlette parses request bodies with `json.loads`, which takes ``NaN``, ``Infinity``,
``-Infinity``, ``1e400`` (read as infinity) and lone surrogates (``"\\ud800"``). `poisoned(body)`
puts one such value anywhere in a body; `dumps` writes it as a client would send it. Forged
pagination cursors (`FORGED_CURSOR`) are the other class: well-formed cursors whose timestamp has
any offset (including one that pushes year 1 or 9999 out of range once in UTC), any text, or odd
items. Used by tests/schemathesis_hooks.py and tests/test_rest_errors.py.
"""

from __future__ import annotations

import base64
import copy
import json
from datetime import datetime, timedelta
from typing import Any

from hypothesis import strategies as st


class Token(str):
    """A JSON token written as it is, unquoted: ``NaN``, ``Infinity``, ``1e400``."""


NON_FINITE = [Token(t) for t in ("NaN", "Infinity", "-Infinity", "1e400", "-1e400", "1E999")]
HUGE_INTEGER = Token("1" + "0" * 400)
SURROGATE = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)
LONE_SURROGATE_TEXT = st.builds(
    lambda head, surrogate, tail: head + surrogate + tail,
    st.text(max_size=4),
    SURROGATE,
    st.text(max_size=4),
)
POISON = st.one_of(
    st.sampled_from([*NON_FINITE, HUGE_INTEGER]),
    LONE_SURROGATE_TEXT,
    st.builds(lambda key: {key: 1}, LONE_SURROGATE_TEXT),
    st.builds(lambda token: [1, token], st.sampled_from(NON_FINITE)),
)


@st.composite
def poisoned(draw: st.DrawFn, body: Any) -> Any:
    """`body` with one value strict JSON cannot carry, at a place drawn anywhere inside it."""
    poison = draw(POISON)
    if not isinstance(body, dict | list) or draw(st.integers(0, 9)) == 0:
        return poison  # the whole body
    value = copy.deepcopy(body)
    container: Any = value
    while True:
        keys = list(container) if isinstance(container, dict) else list(range(len(container)))
        nested = [key for key in keys if isinstance(container[key], dict | list)]
        if not nested or not draw(st.booleans()):
            break
        container = container[draw(st.sampled_from(nested))]
    if isinstance(container, dict):
        new_key = st.one_of(st.sampled_from(["extra", "payload", "data"]), LONE_SURROGATE_TEXT)
        key = draw((st.sampled_from(keys) | new_key) if keys else new_key)
        container[key] = poison
    elif container and draw(st.booleans()):
        container[draw(st.integers(0, len(container) - 1))] = poison
    else:
        container.append(poison)
    return value


def dumps(value: Any) -> str:
    """JSON text of `value`, `Token`s as they are and lone surrogates as their escapes."""
    if isinstance(value, Token):
        return str(value)
    if isinstance(value, dict):
        items = (f"{dumps(str(key))}:{dumps(item)}" for key, item in value.items())
        return "{" + ",".join(items) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(dumps(item) for item in value) + "]"
    if isinstance(value, str | int | float | bool) or value is None:
        return json.dumps(value)  # ensure_ascii: a lone surrogate goes out as `\ud800`
    return json.dumps(str(value))  # e.g. schemathesis's Binary, as its own serializer does


def _offset(minutes: int) -> str:
    sign = "-" if minutes < 0 else "+"
    hours, rest = divmod(abs(minutes), 60)
    return f"{sign}{hours:02d}:{rest:02d}"


def cursor_of(items: list[Any]) -> str:
    """A cursor as the API encodes one: base64url of a JSON array, unpadded."""
    raw = json.dumps(items).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


OFFSET_MINUTES = st.integers(1, 24 * 60 - 1)
# An aware time less than its offset away from the calendar's ends, in the direction that puts
# its UTC time beyond them: what datetime.astimezone cannot represent.
OUT_OF_RANGE_STAMP = st.one_of(
    OFFSET_MINUTES.flatmap(
        lambda minutes: st.integers(0, minutes - 1).map(
            lambda early: (datetime.min + timedelta(minutes=early)).isoformat() + _offset(minutes)
        )
    ),
    OFFSET_MINUTES.flatmap(
        lambda minutes: st.integers(0, minutes - 1).map(
            lambda late: (datetime.max - timedelta(minutes=late)).isoformat() + _offset(-minutes)
        )
    ),
    st.sampled_from(["0001-01-01T00:00:00+23:59", "9999-12-31T23:59:59-23:59"]),
)
STAMP = st.one_of(
    OUT_OF_RANGE_STAMP,
    st.builds(
        lambda moment, minutes: moment.isoformat() + _offset(minutes),
        st.datetimes(),
        st.integers(-(24 * 60 - 1), 24 * 60 - 1),
    ),
    st.datetimes().map(lambda moment: moment.isoformat()),  # no offset: not one of ours
    st.text(max_size=40),
)
IDENT = st.one_of(st.from_regex(r"\A[A-Za-z0-9_][A-Za-z0-9_.:@-]{0,20}\Z"), st.text(max_size=40))
FORGED_CURSOR = st.one_of(
    st.builds(lambda stamp, ident: cursor_of([stamp, ident]), STAMP, IDENT),
    st.builds(
        lambda stamp, ident, stored: cursor_of([stamp, ident, stored]),
        STAMP,
        IDENT,
        st.one_of(st.text(max_size=50), st.integers(), st.none()),
    ),
    st.builds(
        cursor_of,
        st.lists(st.one_of(st.text(max_size=10), st.integers(), st.floats(), st.none())),
    ),
    st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_=", max_size=80),
)
