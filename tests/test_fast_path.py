"""The REST fast path (app/api/fast_path.py): which routes it takes, that it serves them, that it
hands everything else to FastAPI with the body intact, and that every answer is the one FastAPI
gives with it turned off (REST_FAST_PATH=false)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
from fastapi import APIRouter, Depends, FastAPI
from starlette.types import Receive, Scope, Send

from app.api.auth import require_identity
from app.api.deps import ContextDep
from app.api.fast_path import FastPath, plan
from app.api.middleware import ContextScope
from app.core.config import Settings
from app.core.security import Role, TokenCodec
from app.main import create_app
from app.schemas import TaskCreate, TaskOut
from app.server import Service
from tests.conftest import ServiceFactory

SECRET = "f" * 64
JSON = {"content-type": "application/json"}


def _routes(app: FastAPI) -> set[str]:
    return {f"{fast.method} {fast.path}" for fast in plan(app.routes)}


def test_the_common_routes_take_the_fast_path_and_other_shapes_do_not() -> None:
    routes = _routes(create_app(Settings(_env_file=None)))  # type: ignore[call-arg]
    for taken in (
        "POST /api/tasks",
        "PATCH /api/tasks/{task_id}",
        "GET /api/tasks/{task_id}",
        "POST /api/tasks/claim",
        "POST /api/tasks/{task_id}/complete",
        "POST /api/messages",
        "POST /api/messages/{message_id}/read",
    ):
        assert taken in routes, taken
    for left in (
        "GET /api/tasks",  # query parameters
        "POST /api/agents",  # a `Response` parameter (it sets 200 or 201)
        "POST /api/webhooks",  # another dependency (the webhook port)
        "DELETE /api/reservations/{reservation_id}",  # 204, its own response class
        "GET /health",  # no caller identity
    ):
        assert left not in routes, left


def test_a_route_an_earlier_route_may_shadow_stays_with_fastapi() -> None:
    async def special(ctx: ContextDep, verbose: bool = False) -> TaskOut:
        raise AssertionError

    async def one(item_id: str, ctx: ContextDep) -> TaskOut:
        raise AssertionError

    async def create(body: TaskCreate, ctx: ContextDep) -> TaskOut:
        raise AssertionError

    def app_with(*order: str) -> FastAPI:
        router = APIRouter(prefix="/items", dependencies=[Depends(require_identity)])
        adders = {
            "special": lambda: router.get("/special", response_model=TaskOut)(special),
            "one": lambda: router.get("/{item_id}", response_model=TaskOut)(one),
            "create": lambda: router.post("/{item_id}", response_model=TaskOut)(create),
        }
        for name in order:
            adders[name]()
        app = FastAPI()
        app.include_router(router)
        return app

    # GET /items/special is served by `special` (query parameters: FastAPI's) when it comes
    # first; the fast path must then not answer GET /items/{item_id} at all.
    assert _routes(app_with("special", "one", "create")) == {"POST /items/{item_id}"}
    assert _routes(app_with("one", "special", "create")) == {
        "GET /items/{item_id}",
        "POST /items/{item_id}",
    }


class _FastAPIStandIn:
    """Where the fast path hands a request on: records it and its body as received."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        self.bodies.append(body)
        await send({"type": "http.response.start", "status": 299, "headers": []})
        await send({"type": "http.response.body", "body": b"fastapi"})


def _in_process(service: Service, inner: _FastAPIStandIn) -> httpx.AsyncClient:
    fast = ContextScope(FastPath(inner, root=service.app))

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        scope["app"] = service.app  # what Starlette sets before its middleware
        await fast(scope, receive, send)

    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api")


async def _chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def test_the_fast_path_serves_its_routes_and_hands_on_the_rest_intact(
    start_service: ServiceFactory,
) -> None:
    service = await start_service(surfaces=("api",), auth_mode="token", secret_key=SECRET)
    agent = {"Authorization": f"Bearer {TokenCodec(service.settings).create('a1')}", **JSON}
    inner = _FastAPIStandIn()
    async with _in_process(service, inner) as http:
        created = await http.post("/api/tasks", json={"id": "t1", "title": "one"}, headers=agent)
        assert created.status_code == 201, created.text
        assert created.json()["id"] == "t1"
        assert created.headers["content-type"] == "application/json"
        patched = await http.patch("/api/tasks/t1", json={"priority": 3}, headers=agent)
        assert patched.status_code == 200 and patched.json()["priority"] == 3
        # A domain error raised by the endpoint is answered by the app's own handler.
        missing = await http.patch("/api/tasks/nope", json={"priority": 1}, headers=agent)
        assert missing.status_code == 404 and missing.json()["code"] == "NOT_FOUND"
        assert inner.bodies == []

        text = {**agent, "content-type": "text/plain"}
        stranger = {**JSON, "Authorization": "Bearer no"}
        x = b'{"title":"x"}'
        handed_on: list[tuple[str, str, Any, dict[str, str], bytes]] = [
            # not JSON, split over two chunks: replayed as received
            ("POST", "/api/tasks", _chunks(b'{"ti', b"tle"), agent, b'{"title'),
            ("POST", "/api/tasks", b'{"title": ""}', agent, b'{"title": ""}'),  # invalid
            ("POST", "/api/tasks", b"null", agent, b"null"),
            ("POST", "/api/tasks", None, agent, b""),  # no body at all
            ("POST", "/api/tasks", x, text, x),  # another content type
            ("POST", "/api/tasks", x, JSON, x),  # no token
            ("POST", "/api/tasks", x, stranger, x),  # a bad token
            # an id outside the id grammar; a route of another shape
            ("PATCH", "/api/tasks/a%20b", b'{"priority":1}', agent, b'{"priority":1}'),
            ("GET", "/api/tasks", None, agent, b""),
        ]
        for method, path, content, headers, body in handed_on:
            reply = await http.request(method, path, content=content, headers=headers)
            assert (reply.status_code, reply.text) == (299, "fastapi"), (method, path)
            assert inner.bodies[-1] == body
        assert len(inner.bodies) == len(handed_on)
        # With a dependency overridden, only FastAPI's solver knows what to call.
        service.app.dependency_overrides[require_identity] = require_identity
        try:
            overridden = await http.post("/api/tasks", json={"title": "x"}, headers=agent)
        finally:
            service.app.dependency_overrides.clear()
        assert (overridden.status_code, inner.bodies[-1]) == (299, b'{"title":"x"}')
        # Nothing the fast path handed on was written.
        listed = await http.get("/api/tasks/t1", headers=agent)
        assert listed.status_code == 200 and listed.json()["title"] == "one"


_GENERATED = re.compile(r"\b(msg|task|lease)_[0-9a-f]{32}\b")
_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z?$")


def _normalised(value: Any) -> Any:
    """An answer without what differs between two runs of the same requests: times, leases,
    generated ids."""
    if isinstance(value, dict):
        return {
            key: "<lease>"
            if key == "lease_id" or (key == "id" and "fence" in value)
            else _normalised(item)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [_normalised(item) for item in value]
    if isinstance(value, str):
        if _TIME.match(value):
            return "<time>"
        return _GENERATED.sub("<id>", value)
    return value


Script = list[tuple[str, str, dict[str, str], bytes | None]]


def _script(service: Service) -> Callable[[dict[str, Any]], Script]:
    codec = TokenCodec(service.settings)
    a1 = {"Authorization": f"Bearer {codec.create('a1')}"}
    a2 = {"Authorization": f"Bearer {codec.create('a2')}"}
    dash = {"Authorization": f"Bearer {codec.create('dash', role=Role.DASHBOARD)}"}
    j1, j2 = {**a1, **JSON}, {**a2, **JSON}

    def steps(state: dict[str, Any]) -> Script:
        lease = state.get("lease", "lease_" + "0" * 32)
        return [
            ("POST", "/api/tasks", j1, b'{"id": "t1", "title": "one", "priority": 2}'),
            ("POST", "/api/tasks", j1, b'{"id": "t1", "title": "again"}'),  # 409
            ("POST", "/api/tasks", j1, b'{"id": "t2", "title": "two", "depends_on": ["t1"]}'),
            ("POST", "/api/tasks", j1, b'{"title": "dep", "depends_on": ["nope"]}'),  # 422
            ("POST", "/api/tasks", {**a1, "content-type": "application/json; charset=utf-8"},
             b'{"id": "t3", "title": "charset"}'),
            ("POST", "/api/tasks", j1, '{"id": "t4", "title": "utf-16"}'.encode("utf-16")),
            ("POST", "/api/tasks", j1, b"{"),  # not JSON: 400
            ("POST", "/api/tasks", j1, b'{"title": "n", "payload": NaN}'),
            ("POST", "/api/tasks", j1, b'{"title": "n", "payload": 18446744073709551616}'),
            ("POST", "/api/tasks", j1, b'{"title": "n", "payload": {"\\ud800": 1}}'),
            ("POST", "/api/tasks", j1, b"[" * 2000 + b"]" * 2000),
            ("POST", "/api/tasks", j1, b'{"title": ""}'),
            ("POST", "/api/tasks", j1, b'{"title": "x", "unknown": 1}'),
            ("POST", "/api/tasks", j1, b"null"),
            ("POST", "/api/tasks", j1, b"[]"),
            ("POST", "/api/tasks", j1, b""),
            ("POST", "/api/tasks", j1, None),
            ("POST", "/api/tasks", {**a1, "content-type": "text/plain"}, b'{"title": "t"}'),
            ("POST", "/api/tasks", a1, b'{"title": "no content type"}'),
            ("POST", "/api/tasks", JSON, b'{"title": "no token"}'),
            ("POST", "/api/tasks", {**JSON, "Authorization": "Bearer nope"}, b'{"title": "x"}'),
            ("POST", "/api/tasks", {**dash, **JSON}, b'{"title": "dashboard"}'),  # 403
            ("GET", "/api/tasks/t1", a1, None),
            ("GET", "/api/tasks/nope", a1, None),
            ("GET", "/api/tasks/a%20b", a1, None),
            ("PATCH", "/api/tasks/t1", j1, b'{"priority": 4, "description": "d"}'),
            ("PATCH", "/api/tasks/t1", j1, b'{"priority": "high"}'),
            ("PATCH", "/api/tasks/t1", j1, b'{"status": "completed"}'),  # pending → completed: 409
            ("PATCH", "/api/tasks/nope", j1, b'{"priority": 1}'),
            ("PATCH", "/api/tasks/a%20b", j1, b'{"priority": 1}'),
            ("PATCH", "/api/tasks/t1", {**dash, **JSON}, b'{"priority": 1}'),
            ("POST", "/api/messages", j1, b'{"id": "m1", "to_agent": "a2", "content": "hi"}'),
            ("POST", "/api/messages", j1, b'{"to_agent": "a2", "content": "generated id"}'),
            ("POST", "/api/messages", j1, b'{"from_agent": "a2", "to_agent": "a1", "content": ""}'),
            ("POST", "/api/messages", j1, b'{"to_agent": "a2"}'),
            ("GET", "/api/messages/m1", a2, None),
            ("POST", "/api/messages/m1/read", a2, None),
            ("POST", "/api/tasks/claim", j2, b'{"agent_id": "a2"}'),
            ("POST", "/api/tasks/claim", j2, b'{"agent_id": "a1"}'),  # as another: 403
            ("POST", "/api/tasks/t1/complete", j1, f'{{"lease_id": "{lease}"}}'.encode()),
            ("POST", "/api/tasks/t1/complete", j2, b'{"lease_id": "lease_' + b"1" * 32 + b'"}'),
            ("POST", "/api/tasks/t1/complete", j2, f'{{"lease_id": "{lease}"}}'.encode()),
            ("POST", "/api/tasks/t1/complete", j2, f'{{"lease_id": "{lease}"}}'.encode()),
            ("POST", "/api/tasks/claim", j2, b'{"agent_id": "a2"}'),  # t2, ready now
            ("POST", "/api/tasks/claim", j2, b'{"agent_id": "a2"}'),  # t3
            ("POST", "/api/tasks/claim", j2, b'{"agent_id": "a2"}'),  # t4
            ("POST", "/api/tasks/claim", j2, b'{"agent_id": "a2"}'),  # none left: 204
        ]  # fmt: skip

    return steps


async def _run(service: Service) -> list[tuple[int, dict[str, str], Any]]:
    steps = _script(service)
    state: dict[str, Any] = {}
    answers: list[tuple[int, dict[str, str], Any]] = []
    base = f"http://127.0.0.1:{service.settings.api_port}"
    async with httpx.AsyncClient(base_url=base, timeout=10.0) as http:
        for index in range(len(steps(state))):
            method, path, headers, body = steps(state)[index]
            reply = await http.request(method, path, headers=headers, content=body)
            kept = {
                name: reply.headers[name]
                for name in ("content-type", "content-length", "www-authenticate", "retry-after")
                if name in reply.headers
            }
            if "json" in reply.headers.get("content-type", ""):
                document = reply.json()
                if isinstance(document, dict) and "task" in document:  # a claim
                    state["lease"] = document["lease"]["id"]
                content: Any = _normalised(document)
                # Generated ids and times change the length; the body is compared instead.
                kept.pop("content-length", None)
            else:
                content = reply.text
            answers.append((reply.status_code, kept, content))
    return answers


async def test_every_answer_is_fastapis_own(start_service: ServiceFactory, tmp_path: Path) -> None:
    """The same requests, in the same order, against the service with the fast path and
    without it: the same statuses, headers and bodies (times, leases and generated ids aside)."""
    answers = []
    for fast in (True, False):
        service = await start_service(
            surfaces=("api",),
            auth_mode="token",
            secret_key=SECRET,
            rest_fast_path=fast,
            database_url=f"sqlite+aiosqlite:///{tmp_path / f'fast-{fast}.db'}",
            log_level="critical",
        )
        answers.append(await _run(service))
    with_fast, without = answers
    assert len(with_fast) == len(without)
    for index, (mine, theirs) in enumerate(zip(with_fast, without, strict=True)):
        assert mine == theirs, (index, mine, theirs)
    statuses = {status for status, _, _ in without}
    # The script reaches every kind of answer, or the comparison proves less than it says.
    assert {200, 201, 204, 400, 401, 403, 404, 409, 422} <= statuses, statuses
