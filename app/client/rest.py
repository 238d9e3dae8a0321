"""The typed REST client (httpx): tasks, subtasks, messages, agents, sessions, events, metrics.

    async with RestClient("http://127.0.0.1:3847", token=None) as api:
        task = await api.create_task("Add the login endpoint", agent_id="backend-laravel")
        await api.update_task(task["id"], status="in_progress")
        async for task in api.iterate(api.list_tasks, status="pending"):
            ...

Responses are plain dicts typed with TypedDicts (the API's JSON as it is, extra keys kept), so
the SDK needs neither pydantic nor the server's models. Errors raise `ApiError` with the HTTP
status and the API's stable `code` (NOT_FOUND, CONFLICT, VALIDATION_ERROR, …).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypedDict, TypeVar, cast

import httpx

T = TypeVar("T")

TaskStatus = Literal["pending", "in_progress", "completed", "failed", "cancelled"]
Order = Literal["asc", "desc"]  # list order by creation time (the API's `order`)


class Session(TypedDict):
    id: str
    name: str | None
    status: Literal["active", "ended"]
    started_at: str
    ended_at: str | None
    metadata: Any


class Agent(TypedDict):
    id: str
    name: str | None
    kind: str | None
    status: Literal["online", "offline"]
    online: bool
    connections: int
    last_seen: str | None
    metadata: Any
    created_at: str
    updated_at: str


class Task(TypedDict):
    id: str
    session_id: str | None
    agent_id: str | None
    title: str
    description: str | None
    status: TaskStatus
    priority: int
    payload: Any
    result: Any
    error: str | None
    created_at: str
    updated_at: str
    started_at: str | None
    completed_at: str | None


class Subtask(TypedDict):
    id: str
    task_id: str
    agent_id: str | None
    title: str
    description: str | None
    status: TaskStatus
    payload: Any
    result: Any
    error: str | None
    created_at: str
    updated_at: str
    started_at: str | None
    completed_at: str | None


class Message(TypedDict):
    id: str
    from_agent: str
    to_agent: str
    session_id: str | None
    content: str
    data: Any
    created_at: str
    expires_at: str | None
    read_at: str | None
    expired_at: str | None


class Action(TypedDict):
    id: str
    agent_id: str
    session_id: str | None
    kind: str
    detail: Any
    created_at: str


class Published(TypedDict):
    channel: str
    event: str
    offset: int
    timestamp: int


class Metrics(TypedDict):
    active_sessions: int
    active_agents: int
    connected_clients: int
    actions_per_minute: float
    tasks_by_status: dict[str, int]
    tasks_completed_last_hour: int
    tasks_failed_last_hour: int
    failure_rate: float
    mean_task_duration_seconds: float | None
    unread_messages: int
    events_per_second: float
    timestamp: str


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page of a list endpoint; pass `next_cursor` back as `cursor` for the next one."""

    items: list[T]
    next_cursor: str | None


class ApiError(Exception):
    """A non-2xx answer: `status`, the API's `code`, its `detail`, and the decoded body."""

    def __init__(self, status: int, code: str, detail: Any, body: Any = None) -> None:
        super().__init__(f"HTTP {status} {code}: {detail}")
        self.status = status
        self.code = code
        self.detail = detail
        self.body = body


_CODES = {400: "BAD_REQUEST", 401: "UNAUTHORIZED", 403: "FORBIDDEN", 404: "NOT_FOUND"}
_CODES |= {409: "CONFLICT", 413: "TOO_LARGE", 422: "VALIDATION_ERROR", 429: "RATE_LIMITED"}


def _fields(**values: Any) -> dict[str, Any]:
    """Only the fields given (None means "not given": PATCH leaves them as they are)."""
    return {key: value for key, value in values.items() if value is not None}


class RestClient:
    """Async client of the REST API; one connection pool, reused until `aclose()`."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:3847",
        *,
        token: str | None = None,
        timeout: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        headers = {"Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"), headers=headers, timeout=timeout, transport=transport
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> RestClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # --- transport -------------------------------------------------------------------------

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
    ) -> Any:
        """Send one request; return the decoded JSON body or raise ApiError."""
        query = {k: _query_value(v) for k, v in (params or {}).items() if v is not None}
        response = await self._http.request(method, path, json=json, params=query or None)
        if response.is_success:
            return response.json() if response.content else None
        try:
            body: Any = response.json()
        except ValueError:
            body = response.text
        detail = body.get("detail", body) if isinstance(body, dict) else body
        code = body.get("code") if isinstance(body, dict) else None
        raise ApiError(
            response.status_code,
            str(code or _CODES.get(response.status_code, "HTTP_ERROR")),
            detail,
            body,
        )

    async def _page(self, path: str, params: Mapping[str, Any]) -> Page[Any]:
        body = await self.request("GET", path, params=params)
        return Page(items=list(body["items"]), next_cursor=body.get("next_cursor"))

    async def iterate(
        self, list_method: Callable[..., Awaitable[Page[T]]], **filters: Any
    ) -> AsyncIterator[T]:
        """Every item of a list endpoint, following `next_cursor` page after page."""
        cursor: str | None = None
        while True:
            page = await list_method(**filters, cursor=cursor)
            for item in page.items:
                yield item
            if not page.next_cursor:
                return
            cursor = page.next_cursor

    # --- service ---------------------------------------------------------------------------

    async def health(self) -> dict[str, Any]:
        """GET /health (the API and its database)."""
        return cast(dict[str, Any], await self.request("GET", "/health"))

    async def metrics(self) -> Metrics:
        """The current KPI snapshot (the data of `metric.update`)."""
        return cast(Metrics, await self.request("GET", "/api/metrics"))

    async def publish(self, channel: str, event: str, data: Any = None) -> Published:
        """Server-side publish of `event` on any valid channel."""
        body = {"channel": channel, "event": event, "data": data}
        return cast(Published, await self.request("POST", "/api/events", json=body))

    # --- sessions --------------------------------------------------------------------------

    async def create_session(
        self, *, id: str | None = None, name: str | None = None, metadata: Any = None
    ) -> Session:
        body = _fields(id=id, name=name, metadata=metadata)
        return cast(Session, await self.request("POST", "/api/sessions", json=body))

    async def list_sessions(
        self,
        *,
        status: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
        order: Order | None = None,
    ) -> Page[Session]:
        params = {"status": status, "limit": limit, "cursor": cursor, "order": order}
        return await self._page("/api/sessions", params)

    async def get_session(self, session_id: str) -> Session:
        return cast(Session, await self.request("GET", f"/api/sessions/{_seg(session_id)}"))

    async def update_session(self, session_id: str, **fields: Any) -> Session:
        path = f"/api/sessions/{_seg(session_id)}"
        return cast(Session, await self.request("PATCH", path, json=_fields(**fields)))

    async def end_session(self, session_id: str) -> Session:
        return await self.update_session(session_id, status="ended")

    # --- agents ----------------------------------------------------------------------------

    async def register_agent(
        self,
        agent_id: str,
        *,
        name: str | None = None,
        kind: str | None = None,
        metadata: Any = None,
    ) -> Agent:
        """Register (idempotent on the id)."""
        body = _fields(id=agent_id, name=name, kind=kind, metadata=metadata)
        return cast(Agent, await self.request("POST", "/api/agents", json=body))

    async def list_agents(
        self,
        *,
        status: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
        order: Order | None = None,
    ) -> Page[Agent]:
        params = {"status": status, "limit": limit, "cursor": cursor, "order": order}
        return await self._page("/api/agents", params)

    async def get_agent(self, agent_id: str) -> Agent:
        return cast(Agent, await self.request("GET", f"/api/agents/{_seg(agent_id)}"))

    async def heartbeat(self, agent_id: str) -> Agent:
        path = f"/api/agents/{_seg(agent_id)}/heartbeat"
        return cast(Agent, await self.request("POST", path))

    # --- tasks -----------------------------------------------------------------------------

    async def create_task(
        self,
        title: str,
        *,
        id: str | None = None,
        description: str | None = None,
        session_id: str | None = None,
        agent_id: str | None = None,
        priority: int | None = None,
        payload: Any = None,
    ) -> Task:
        body = _fields(
            id=id,
            title=title,
            description=description,
            session_id=session_id,
            agent_id=agent_id,
            priority=priority,
            payload=payload,
        )
        return cast(Task, await self.request("POST", "/api/tasks", json=body))

    async def list_tasks(
        self,
        *,
        status: TaskStatus | None = None,
        agent_id: str | None = None,
        session_id: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
        order: Order | None = None,
        **filters: Any,
    ) -> Page[Task]:
        params = {
            "status": status,
            "agent_id": agent_id,
            "session_id": session_id,
            "limit": limit,
            "cursor": cursor,
            "order": order,
            **filters,
        }
        return await self._page("/api/tasks", params)

    async def get_task(self, task_id: str) -> Task:
        return cast(Task, await self.request("GET", f"/api/tasks/{_seg(task_id)}"))

    async def update_task(self, task_id: str, **fields: Any) -> Task:
        """PATCH a task: status, result, error, title, description, agent_id, priority, payload."""
        path = f"/api/tasks/{_seg(task_id)}"
        return cast(Task, await self.request("PATCH", path, json=_fields(**fields)))

    async def create_subtask(
        self,
        task_id: str,
        title: str,
        *,
        id: str | None = None,
        description: str | None = None,
        agent_id: str | None = None,
        payload: Any = None,
    ) -> Subtask:
        body = _fields(
            id=id, title=title, description=description, agent_id=agent_id, payload=payload
        )
        path = f"/api/tasks/{_seg(task_id)}/subtasks"
        return cast(Subtask, await self.request("POST", path, json=body))

    async def list_subtasks(
        self,
        task_id: str,
        *,
        limit: int | None = None,
        cursor: str | None = None,
        order: Order | None = None,
    ) -> Page[Subtask]:
        path = f"/api/tasks/{_seg(task_id)}/subtasks"
        return await self._page(path, {"limit": limit, "cursor": cursor, "order": order})

    async def update_subtask(self, subtask_id: str, **fields: Any) -> Subtask:
        path = f"/api/subtasks/{_seg(subtask_id)}"
        return cast(Subtask, await self.request("PATCH", path, json=_fields(**fields)))

    # --- messages and actions --------------------------------------------------------------

    async def send_message(
        self,
        from_agent: str,
        to_agent: str,
        content: str,
        *,
        id: str | None = None,
        data: Any = None,
        session_id: str | None = None,
        ttl_seconds: int | None = None,
    ) -> Message:
        body = _fields(
            id=id,
            from_agent=from_agent,
            to_agent=to_agent,
            content=content,
            data=data,
            session_id=session_id,
            ttl_seconds=ttl_seconds,
        )
        return cast(Message, await self.request("POST", "/api/messages", json=body))

    async def list_messages(
        self,
        *,
        to_agent: str | None = None,
        unread: bool | None = None,
        limit: int | None = None,
        cursor: str | None = None,
        order: Order | None = None,
        **filters: Any,
    ) -> Page[Message]:
        params = {
            "to_agent": to_agent,
            "unread": unread,
            "limit": limit,
            "cursor": cursor,
            "order": order,
        }
        return await self._page("/api/messages", {**params, **filters})

    async def mark_read(self, message_id: str) -> Message:
        path = f"/api/messages/{_seg(message_id)}/read"
        return cast(Message, await self.request("POST", path))

    async def log_action(
        self,
        agent_id: str,
        kind: str,
        *,
        detail: Any = None,
        session_id: str | None = None,
        id: str | None = None,
    ) -> Action:
        body = _fields(id=id, agent_id=agent_id, kind=kind, detail=detail, session_id=session_id)
        return cast(Action, await self.request("POST", "/api/actions", json=body))


def _query_value(value: Any) -> Any:
    if isinstance(value, bool):
        return "true" if value else "false"
    return value


def _seg(value: str) -> str:
    """One path segment, escaped: an id can never reach another route."""
    from urllib.parse import quote

    return quote(value, safe="")
