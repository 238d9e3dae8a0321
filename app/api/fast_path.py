"""The REST fast path: the /api routes of the common shape, run without FastAPI's request machinery.

Most /api routes are `(path ids, one JSON body model, ctx: ContextDep) -> response model`.
For them FastAPI's router walk, dependency solver and exit stacks were half of a write's CPU
(py-spy of POST /api/tasks: the router and route handler 53 % of the event loop, the endpoint
itself 12 %; docs/performance.md, tenth pass). `FastPath` runs such a request itself, with
the pieces FastAPI built for that route:

    the route's own path regex and convertors      → path params
    the route's path ModelFields (validate)        → the ids' pattern
    require_identity, get_context (app/api/deps)   → the caller and its domain Context
    the route's body ModelField (validate)         → the body model
    the endpoint function                          → the answer, or a domain error
    the route's response ModelField (serialize_json), status code   → the response

It answers only the happy path up to the endpoint call. A request it cannot take as it is —
not JSON (`content-type` other than application/json, or a body that does not parse), a body or
an id that fails validation, no or a bad token — goes on, its body replayed, to the FastAPI
app, which answers it as it always did: every 4xx before the endpoint is FastAPI's own.
Errors the endpoint raises are answered by the app's exception handlers, looked up as
Starlette does. `tests/test_fast_path.py` sends the same requests with and without the fast
path and compares the answers.

Which routes: `eligible()` decides from each route's dependant, so a new route of the same
shape joins without a line here, and any other (query parameters, another dependency, a
custom response class) stays with FastAPI, as does every request while the app has
`dependency_overrides`. A route that an earlier route could shadow (same
method, a template that can match the same path) stays with FastAPI too, so the fast path
never answers a request the router would have given to another route.

It sits inside the body limit, CORS, idempotency and ContextScope (app/main.py), so those
apply unchanged; the scope gets the `route`, `endpoint` and `path_params` the router sets
(the request metrics label requests by `route.path`).
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.datastructures import DefaultPlaceholder
from fastapi.exceptions import ResponseValidationError
from fastapi.routing import APIRoute, RouteContext, iter_route_contexts
from starlette._utils import get_route_path  # the router's own (FastAPI imports it too)
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.routing import Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.auth import require_identity
from app.api.deps import get_context

# Statuses whose responses carry no body: such routes stay with FastAPI, which blanks it.
_NO_BODY = {204, 304}
_JSON = b"application/json"


@dataclass(frozen=True, slots=True)
class _Route:
    """One route the fast path serves, with what FastAPI built for it."""

    path: str  # the route's template, prefix included
    route: APIRoute
    method: str
    regex: Any
    convertors: dict[str, Any]
    path_fields: tuple[Any, ...]  # ModelFields, in the dependant's order
    body_field: Any  # ModelField | None
    body_name: str | None
    context_names: tuple[str, ...]  # the endpoint's ContextDep parameters
    endpoint: Callable[..., Awaitable[Any]]
    response_field: Any  # ModelField
    status_code: int
    dump_options: dict[str, Any]


def eligible(context: RouteContext) -> _Route | None:
    """The fast path's plan for a route, or None to leave it to FastAPI (module docstring)."""
    route = context.original_route
    methods = sorted(context.methods or ())
    if not isinstance(route, APIRoute) or len(methods) != 1:
        return None
    dependant = context.dependant
    if not inspect.iscoroutinefunction(dependant.call):  # FastAPI runs a `def` in a thread
        return None
    if (
        dependant.query_params
        or dependant.header_params
        or dependant.cookie_params
        or dependant.request_param_name
        or dependant.websocket_param_name
        or dependant.http_connection_param_name
        or dependant.response_param_name
        or dependant.background_tasks_param_name
        or dependant.security_scopes_param_name
        or len(dependant.body_params) > 1
    ):
        return None
    context_names: list[str] = []
    for sub in dependant.dependencies:
        if sub.call is get_context and sub.name:
            context_names.append(sub.name)
        elif sub.call is not require_identity or sub.name:
            return None
    if not context_names and all(
        sub.call is not require_identity for sub in dependant.dependencies
    ):
        return None  # no caller to know: nothing of the fast path's to skip
    body_field = dependant.body_params[0] if dependant.body_params else None
    if body_field is not None and getattr(body_field.field_info, "embed", None):
        return None
    status_code = context.status_code or 200
    if (
        context.response_field is None
        or not isinstance(context.response_class, DefaultPlaceholder)
        or context.max_body_size is not None
        or status_code in _NO_BODY
        or context.is_sse_stream
        or context.is_json_stream
        or context.stream_item_field is not None
    ):
        return None
    method = methods[0]
    return _Route(
        path=context.path or "",
        route=route,
        method=method,
        regex=context.path_regex,
        convertors=context.param_convertors,
        path_fields=tuple(dependant.path_params),
        body_field=body_field,
        body_name=body_field.name if body_field is not None else None,
        context_names=tuple(context_names),
        endpoint=dependant.call,
        response_field=context.response_field,
        status_code=status_code,
        dump_options={
            "include": context.response_model_include,
            "exclude": context.response_model_exclude,
            "by_alias": context.response_model_by_alias,
            "exclude_unset": context.response_model_exclude_unset,
            "exclude_defaults": context.response_model_exclude_defaults,
            "exclude_none": context.response_model_exclude_none,
        },
    )


def _segments(path: str) -> list[str]:
    return path.strip("/").split("/")


def _may_overlap(template: str, other: str, prefix: bool = False) -> bool:
    """Whether some path matches both templates (`prefix`: `other` is a mount's prefix).
    Conservative: a `{…:path}` parameter, which spans segments, overlaps everything."""
    if ":path}" in template or ":path}" in other:
        return True
    mine, theirs = _segments(template), _segments(other)
    if prefix:
        mine = mine[: len(theirs)]
    if len(mine) != len(theirs):
        return False
    pairs = zip(mine, theirs, strict=True)
    return all(a == b or a.startswith("{") or b.startswith("{") for a, b in pairs)


def plan(routes: Sequence[Any]) -> list[_Route]:
    """The fast routes of `routes`, in the router's order, without any an earlier route could
    shadow."""
    planned: list[_Route] = []
    earlier: list[RouteContext] = []
    for context in iter_route_contexts(routes):
        fast = eligible(context)
        if fast is not None and not any(_shadows(other, fast) for other in earlier):
            planned.append(fast)
        earlier.append(context)
    return planned


def _shadows(other: RouteContext, fast: _Route) -> bool:
    if isinstance(other.original_route, Mount):
        return _may_overlap(fast.path, other.path or "", prefix=True)
    methods = other.methods
    if methods is not None and fast.method not in methods:
        return False
    return _may_overlap(fast.path, other.path or "")


class FastPath:
    """Serve the fast routes of `root` (module docstring); pass everything else to `app`."""

    def __init__(self, app: ASGIApp, root: FastAPI) -> None:
        self.app = app
        self.root = root
        self.routes = plan(root.routes)
        # By method, so a request looks only at the routes it could match.
        self._by_method: dict[str, list[_Route]] = {}
        for fast in self.routes:
            self._by_method.setdefault(fast.method, []).append(fast)
        # As Starlette splits them: 500 and Exception go to ServerErrorMiddleware, outside us.
        handlers = {
            key: handler
            for key, handler in root.exception_handlers.items()
            if key not in (500, Exception)
        }
        self._status_handlers = {k: v for k, v in handlers.items() if isinstance(k, int)}
        self._class_handlers = {k: v for k, v in handlers.items() if not isinstance(k, int)}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # With dependency overrides (FastAPI's way to swap a dependency, in tests) only
        # FastAPI's solver knows what to call.
        if scope["type"] == "http" and not self.root.dependency_overrides:
            path = get_route_path(scope)
            for fast in self._by_method.get(scope["method"], ()):
                match = fast.regex.match(path)
                if match is not None:
                    await self._serve(fast, match.groupdict(), scope, receive, send)
                    return
        await self.app(scope, receive, send)

    async def _serve(
        self, fast: _Route, raw: dict[str, str], scope: Scope, receive: Receive, send: Send
    ) -> None:
        received: list[Message] = []
        kwargs: dict[str, Any] = {}
        path_params = {key: fast.convertors[key].convert(value) for key, value in raw.items()}
        for field in fast.path_fields:
            value, errors = field.validate(
                path_params.get(field.alias), kwargs, loc=("path", field.alias)
            )
            if errors:
                await self._fall_through(scope, received, receive, send)
                return
            kwargs[field.name] = value
        if fast.body_field is not None:
            body = await self._read_body(receive, received)
            if body is None or not _is_json(scope):
                await self._fall_through(scope, received, receive, send)
                return
            # The parser FastAPI uses (Request.json): orjson reads some documents otherwise
            # (an integer past 64 bits becomes a float), and the answer must not change.
            try:
                document = json.loads(body)
            except (ValueError, RecursionError):
                document = None
            if document is None:  # not JSON, or `null`: FastAPI's answer
                await self._fall_through(scope, received, receive, send)
                return
            model, errors = fast.body_field.validate(document, kwargs, loc=("body",))
            if errors:
                await self._fall_through(scope, received, receive, send)
                return
            kwargs[fast.body_name] = model  # type: ignore[index]
        request = Request(scope, receive)
        try:
            identity = await require_identity(request)
        except Exception:
            await self._fall_through(scope, received, receive, send)
            return
        scope["route"] = fast.route
        scope["endpoint"] = fast.endpoint
        scope["path_params"] = path_params
        try:
            if fast.context_names:
                context = await get_context(request, identity)
                for name in fast.context_names:
                    kwargs[name] = context
            result = await fast.endpoint(**kwargs)
            if isinstance(result, Response):
                response = result
            else:
                value, errors = fast.response_field.validate(result, {}, loc=("response",))
                if errors:
                    raise ResponseValidationError(errors, body=result)
                content = fast.response_field.serialize_json(value, **fast.dump_options)
                response = Response(content, fast.status_code, media_type="application/json")
        except Exception as exc:
            handler = self._handler(exc)
            if handler is None:
                raise
            if inspect.iscoroutinefunction(handler):
                response = await handler(request, exc)
            else:
                response = await run_in_threadpool(handler, request, exc)
        await response(scope, receive, send)

    @staticmethod
    async def _read_body(receive: Receive, received: list[Message]) -> bytes | None:
        """The whole body, or None (the client left, or sent none); what was read is kept in
        `received` for a fall-through to replay."""
        chunks: list[bytes] = []
        while True:
            message = await receive()
            received.append(message)
            if message["type"] != "http.request":
                return None
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                body = b"".join(chunks)
                return body or None

    async def _fall_through(
        self, scope: Scope, received: list[Message], receive: Receive, send: Send
    ) -> None:
        """Hand the request to the FastAPI app as if the fast path had not looked at it."""
        pending = list(received)

        async def replay() -> Message:
            if pending:
                return pending.pop(0)
            return await receive()

        await self.app(scope, replay, send)

    def _handler(self, exc: Exception) -> Callable[[Request, Exception], Any] | None:
        """The app's handler for `exc`, looked up as Starlette's ExceptionMiddleware does."""
        if isinstance(exc, HTTPException) and exc.status_code in self._status_handlers:
            return self._status_handlers[exc.status_code]
        for kind in type(exc).__mro__:
            if kind in self._class_handlers:
                return self._class_handlers[kind]
        return None


def _is_json(scope: Scope) -> bool:
    """Whether the request says its body is JSON (`application/json`, any parameters)."""
    for name, value in scope["headers"]:
        if name == b"content-type":
            media_type: bytes = value.split(b";", 1)[0].strip().lower()
            return media_type == _JSON
    return False
