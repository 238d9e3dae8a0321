"""The typed REST client (httpx): every endpoint of the API, one method each.

    async with RestClient("http://127.0.0.1:3847", token=None) as api:
        task = await api.create_task("Add the login endpoint", agent_id="backend-laravel")
        claimed = await api.claim_task(agent_id="backend-laravel", wait_seconds=20)
        if claimed is not None:
            await api.complete_task(claimed["task"]["id"], claimed["lease"]["id"], result={})
        async for task in api.iterate(api.list_tasks, status="pending"):
            ...

Responses are plain dicts typed with TypedDicts (the API's JSON as it is, extra keys kept), so
the client needs neither pydantic nor the server's models. Errors raise `ApiError` with the HTTP
status and the API's stable `code` (NOT_FOUND, CONFLICT, VALIDATION_ERROR, LEASE_LOST, …).
Every POST takes `idempotency_key=`: sent as `Idempotency-Key`, a retry of the same request
gets the first answer instead of a second write (docs/agents.md).

Which method calls which endpoint: `ENDPOINTS` (a test holds it to the server's OpenAPI).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypedDict, TypeVar, cast
from urllib.parse import quote

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
    capabilities: list[str]
    summary: str | None
    activity: str | None


class Lease(TypedDict):
    id: str
    agent_id: str
    fence: int
    expires_at: str


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
    depends_on: list[str]
    capabilities: list[str]
    max_attempts: int
    attempts: int
    ready_at: str | None
    lease: Lease | None


class Claimed(TypedDict):
    """A claimed task and the lease to pass to renew/complete/fail/release."""

    task: Task
    lease: Lease


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
    seq: int | None
    thread_id: str | None
    reply_to: str | None


class Inbox(TypedDict):
    """Messages after a position, oldest first; `cursor` is where to read on from."""

    messages: list[Message]
    cursor: int


class InboxPosition(TypedDict):
    agent_id: str
    acked: int
    last_seq: int


class Reservation(TypedDict):
    id: str
    agent_id: str
    paths: list[str]
    exclusive: bool
    reason: str | None
    created_at: str
    expires_at: str
    released_at: str | None
    expired_at: str | None
    active: bool


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


class Publication(TypedDict):
    channel: str
    event: str
    data: Any
    timestamp: int
    offset: int
    epoch: str


class History(TypedDict):
    """A channel's retained publications after a position, and its top (`offset`, `epoch`)."""

    channel: str
    offset: int
    epoch: str
    recovered: bool
    publications: list[Publication]


class Presence(TypedDict):
    channel: str
    num_clients: int
    num_agents: int
    presence: dict[str, Any]


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


class MetricsHistory(TypedDict):
    interval: float
    window_seconds: float
    timestamp: str
    items: list[Metrics]


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

# "METHOD /path" of the API → the method that calls it. tests/test_client_rest.py compares it
# with the server's OpenAPI document, so an endpoint without a method fails the tests.
ENDPOINTS: dict[str, str] = {
    "GET /health": "health",
    "GET /api": "index",
    "POST /api/sessions": "create_session",
    "GET /api/sessions": "list_sessions",
    "GET /api/sessions/{session_id}": "get_session",
    "PATCH /api/sessions/{session_id}": "update_session",
    "POST /api/agents": "register_agent",
    "GET /api/agents": "list_agents",
    "GET /api/agents/{agent_id}": "get_agent",
    "POST /api/agents/{agent_id}/heartbeat": "heartbeat",
    "GET /api/agents/{agent_id}/inbox": "read_inbox",
    "POST /api/agents/{agent_id}/inbox/ack": "ack_inbox",
    "POST /api/tasks": "create_task",
    "GET /api/tasks": "list_tasks",
    "GET /api/tasks/{task_id}": "get_task",
    "PATCH /api/tasks/{task_id}": "update_task",
    "POST /api/tasks/claim": "claim_task",
    "POST /api/tasks/{task_id}/lease": "renew_lease",
    "POST /api/tasks/{task_id}/complete": "complete_task",
    "POST /api/tasks/{task_id}/fail": "fail_task",
    "POST /api/tasks/{task_id}/release": "release_task",
    "POST /api/tasks/{task_id}/subtasks": "create_subtask",
    "GET /api/tasks/{task_id}/subtasks": "list_subtasks",
    "PATCH /api/subtasks/{subtask_id}": "update_subtask",
    "POST /api/messages": "send_message",
    "GET /api/messages": "list_messages",
    "GET /api/messages/{message_id}": "get_message",
    "POST /api/messages/{message_id}/read": "mark_read",
    "POST /api/reservations": "reserve",
    "GET /api/reservations": "list_reservations",
    "POST /api/reservations/{reservation_id}/renew": "renew_reservation",
    "DELETE /api/reservations/{reservation_id}": "release_reservation",
    "POST /api/actions": "log_action",
    "POST /api/events": "publish",
    "GET /api/metrics": "metrics",
    "GET /api/metrics/history": "metrics_history",
    "GET /api/channels/{channel}/history": "channel_history",
    "GET /api/channels/{channel}/presence": "channel_presence",
    "POST /api/webhooks": "create_webhook",
    "GET /api/webhooks": "list_webhooks",
    "GET /api/webhooks/{webhook_id}": "get_webhook",
    "PATCH /api/webhooks/{webhook_id}": "update_webhook",
    "DELETE /api/webhooks/{webhook_id}": "delete_webhook",
    "POST /api/webhooks/{webhook_id}/rotate-secret": "rotate_webhook_secret",
    "POST /api/webhooks/{webhook_id}/test": "test_webhook",
    "GET /api/webhooks/{webhook_id}/deliveries": "list_webhook_deliveries",
    "POST /api/webhooks/{webhook_id}/deliveries/{delivery_id}/retry": "retry_webhook_delivery",
}


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
        self.timeout = timeout
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"), headers=headers, timeout=timeout, transport=transport
        )

    async def aclose(self) -> None:
        """Close the connection pool."""
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
        idempotency_key: str | None = None,
        wait: float = 0,
    ) -> Any:
        """Send one request; return the decoded JSON body (None for 204) or raise ApiError.

        `wait`: seconds the server may hold the request (a long poll), added to the timeout.
        """
        query = {k: _query_value(v) for k, v in (params or {}).items() if v is not None}
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        timeout = self.timeout + wait if wait else httpx.USE_CLIENT_DEFAULT
        response = await self._http.request(
            method, path, json=json, params=query or None, headers=headers, timeout=timeout
        )
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

    async def _post(
        self, path: str, body: Any = None, idempotency_key: str | None = None, wait: float = 0
    ) -> Any:
        return await self.request(
            "POST", path, json=body, idempotency_key=idempotency_key, wait=wait
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

    async def index(self) -> dict[str, Any]:
        """GET /api: the resources and their operations."""
        return cast(dict[str, Any], await self.request("GET", "/api"))

    async def metrics(self) -> Metrics:
        """The current KPI snapshot (the data of `metric.update`)."""
        return cast(Metrics, await self.request("GET", "/api/metrics"))

    async def metrics_history(self) -> MetricsHistory:
        """The snapshots of the last minutes, oldest first (the dashboard chart's start)."""
        return cast(MetricsHistory, await self.request("GET", "/api/metrics/history"))

    async def publish(
        self, channel: str, event: str, data: Any = None, *, idempotency_key: str | None = None
    ) -> Published:
        """Server-side publish of `event` on any valid channel."""
        body = {"channel": channel, "event": event, "data": data}
        return cast(Published, await self._post("/api/events", body, idempotency_key))

    async def channel_history(
        self,
        channel: str,
        *,
        since_offset: int | None = None,
        since_epoch: str | None = None,
        limit: int | None = None,
    ) -> History:
        """A channel's retained publications after (since_offset, since_epoch)."""
        params = {"since_offset": since_offset, "since_epoch": since_epoch, "limit": limit}
        path = f"/api/channels/{_channel(channel)}/history"
        return cast(History, await self.request("GET", path, params=params))

    async def channel_presence(self, channel: str) -> Presence:
        """Who is subscribed to a channel, cluster-wide."""
        path = f"/api/channels/{_channel(channel)}/presence"
        return cast(Presence, await self.request("GET", path))

    # --- sessions --------------------------------------------------------------------------

    async def create_session(
        self,
        *,
        id: str | None = None,
        name: str | None = None,
        metadata: Any = None,
        idempotency_key: str | None = None,
    ) -> Session:
        body = _fields(id=id, name=name, metadata=metadata)
        return cast(Session, await self._post("/api/sessions", body, idempotency_key))

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
        agent_id: str | None = None,
        *,
        name: str | None = None,
        kind: str | None = None,
        metadata: Any = None,
        capabilities: list[str] | None = None,
        summary: str | None = None,
        activity: str | None = None,
        idempotency_key: str | None = None,
    ) -> Agent:
        """Register (idempotent on the id; in token mode the id is the token's agent)."""
        body = _fields(
            id=agent_id,
            name=name,
            kind=kind,
            metadata=metadata,
            capabilities=capabilities,
            summary=summary,
            activity=activity,
        )
        return cast(Agent, await self._post("/api/agents", body, idempotency_key))

    async def list_agents(
        self,
        *,
        status: str | None = None,
        capability: str | None = None,
        online: bool | None = None,
        limit: int | None = None,
        cursor: str | None = None,
        order: Order | None = None,
    ) -> Page[Agent]:
        params = {
            "status": status,
            "capability": capability,
            "online": online,
            "limit": limit,
            "cursor": cursor,
            "order": order,
        }
        return await self._page("/api/agents", params)

    async def get_agent(self, agent_id: str) -> Agent:
        return cast(Agent, await self.request("GET", f"/api/agents/{_seg(agent_id)}"))

    async def heartbeat(
        self,
        agent_id: str,
        *,
        activity: str | None = None,
        summary: str | None = None,
        idempotency_key: str | None = None,
    ) -> Agent:
        """Mark the agent alive (and renew its leases); optionally say what it is doing."""
        body = _fields(activity=activity, summary=summary) or None
        path = f"/api/agents/{_seg(agent_id)}/heartbeat"
        return cast(Agent, await self._post(path, body, idempotency_key))

    async def read_inbox(
        self,
        agent_id: str,
        *,
        after: int | None = None,
        limit: int | None = None,
        wait: float | None = None,
    ) -> Inbox:
        """Messages to the agent after `after` (default: its acknowledged position), oldest
        first; with `wait`, a long poll of up to that many seconds when there is none."""
        params = {"after": after, "limit": limit, "wait": wait}
        path = f"/api/agents/{_seg(agent_id)}/inbox"
        return cast(Inbox, await self.request("GET", path, params=params, wait=wait or 0))

    async def ack_inbox(
        self, agent_id: str, up_to: int, *, idempotency_key: str | None = None
    ) -> InboxPosition:
        """Record that the agent handled its messages up to `up_to` (a `seq`, or a cursor)."""
        path = f"/api/agents/{_seg(agent_id)}/inbox/ack"
        body = {"up_to": up_to}
        return cast(InboxPosition, await self._post(path, body, idempotency_key))

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
        depends_on: list[str] | None = None,
        capabilities: list[str] | None = None,
        max_attempts: int | None = None,
        idempotency_key: str | None = None,
    ) -> Task:
        body = _fields(
            id=id,
            title=title,
            description=description,
            session_id=session_id,
            agent_id=agent_id,
            priority=priority,
            payload=payload,
            depends_on=depends_on,
            capabilities=capabilities,
            max_attempts=max_attempts,
        )
        return cast(Task, await self._post("/api/tasks", body, idempotency_key))

    async def list_tasks(
        self,
        *,
        status: TaskStatus | None = None,
        agent_id: str | None = None,
        session_id: str | None = None,
        ready: bool | None = None,
        limit: int | None = None,
        cursor: str | None = None,
        order: Order | None = None,
        **filters: Any,
    ) -> Page[Task]:
        """Tasks, filtered; `ready=True`: pending ones whose dependencies are all completed."""
        params = {
            "status": status,
            "agent_id": agent_id,
            "session_id": session_id,
            "ready": ready,
            "limit": limit,
            "cursor": cursor,
            "order": order,
            **filters,
        }
        return await self._page("/api/tasks", params)

    async def get_task(self, task_id: str) -> Task:
        return cast(Task, await self.request("GET", f"/api/tasks/{_seg(task_id)}"))

    async def update_task(self, task_id: str, **fields: Any) -> Task:
        """PATCH a task: status, result, error, title, description, agent_id, priority, payload,
        depends_on, capabilities, max_attempts (lease_id: as the lease's holder)."""
        path = f"/api/tasks/{_seg(task_id)}"
        return cast(Task, await self.request("PATCH", path, json=_fields(**fields)))

    async def claim_task(
        self,
        *,
        agent_id: str | None = None,
        capabilities: list[str] | None = None,
        session_id: str | None = None,
        lease_seconds: int | None = None,
        wait_seconds: float | None = None,
        idempotency_key: str | None = None,
    ) -> Claimed | None:
        """Claim the best ready task under a lease; None when none was ready (after waiting
        up to `wait_seconds`)."""
        body = _fields(
            agent_id=agent_id,
            capabilities=capabilities,
            session_id=session_id,
            lease_seconds=lease_seconds,
            wait_seconds=wait_seconds,
        )
        claimed = await self._post("/api/tasks/claim", body, idempotency_key, wait_seconds or 0)
        return cast(Claimed | None, claimed)

    async def renew_lease(
        self,
        task_id: str,
        lease_id: str,
        *,
        lease_seconds: int | None = None,
        idempotency_key: str | None = None,
    ) -> Task:
        """Extend the lease on a claimed task (409 LEASE_LOST when it is no longer yours)."""
        body = _fields(lease_id=lease_id, lease_seconds=lease_seconds)
        path = f"/api/tasks/{_seg(task_id)}/lease"
        return cast(Task, await self._post(path, body, idempotency_key))

    async def complete_task(
        self,
        task_id: str,
        lease_id: str,
        *,
        result: Any = None,
        idempotency_key: str | None = None,
    ) -> Task:
        """Complete a claimed task; its dependents become ready."""
        body = _fields(lease_id=lease_id, result=result)
        path = f"/api/tasks/{_seg(task_id)}/complete"
        return cast(Task, await self._post(path, body, idempotency_key))

    async def fail_task(
        self,
        task_id: str,
        lease_id: str,
        error: str,
        *,
        retry: bool | None = None,
        idempotency_key: str | None = None,
    ) -> Task:
        """Fail this attempt: pending again while attempts are left (and `retry`), else failed."""
        body = _fields(lease_id=lease_id, error=error, retry=retry)
        path = f"/api/tasks/{_seg(task_id)}/fail"
        return cast(Task, await self._post(path, body, idempotency_key))

    async def release_task(
        self, task_id: str, lease_id: str, *, idempotency_key: str | None = None
    ) -> Task:
        """Give a claimed task back untouched; the attempt does not count."""
        path = f"/api/tasks/{_seg(task_id)}/release"
        return cast(Task, await self._post(path, {"lease_id": lease_id}, idempotency_key))

    async def create_subtask(
        self,
        task_id: str,
        title: str,
        *,
        id: str | None = None,
        description: str | None = None,
        agent_id: str | None = None,
        payload: Any = None,
        idempotency_key: str | None = None,
    ) -> Subtask:
        body = _fields(
            id=id, title=title, description=description, agent_id=agent_id, payload=payload
        )
        path = f"/api/tasks/{_seg(task_id)}/subtasks"
        return cast(Subtask, await self._post(path, body, idempotency_key))

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
        from_agent: str | None,
        to_agent: str,
        content: str,
        *,
        id: str | None = None,
        data: Any = None,
        session_id: str | None = None,
        ttl_seconds: int | None = None,
        thread_id: str | None = None,
        reply_to: str | None = None,
        idempotency_key: str | None = None,
    ) -> Message:
        """Send a direct message (in token mode `from_agent` is the token's agent: pass None)."""
        body = _fields(
            id=id,
            from_agent=from_agent,
            to_agent=to_agent,
            content=content,
            data=data,
            session_id=session_id,
            ttl_seconds=ttl_seconds,
            thread_id=thread_id,
            reply_to=reply_to,
        )
        return cast(Message, await self._post("/api/messages", body, idempotency_key))

    async def list_messages(
        self,
        *,
        to_agent: str | None = None,
        from_agent: str | None = None,
        session_id: str | None = None,
        unread: bool | None = None,
        thread_id: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
        order: Order | None = None,
        **filters: Any,
    ) -> Page[Message]:
        params = {
            "to_agent": to_agent,
            "from_agent": from_agent,
            "session_id": session_id,
            "unread": unread,
            "thread_id": thread_id,
            "limit": limit,
            "cursor": cursor,
            "order": order,
        }
        return await self._page("/api/messages", {**params, **filters})

    async def get_message(self, message_id: str) -> Message:
        return cast(Message, await self.request("GET", f"/api/messages/{_seg(message_id)}"))

    async def mark_read(self, message_id: str, *, idempotency_key: str | None = None) -> Message:
        path = f"/api/messages/{_seg(message_id)}/read"
        return cast(Message, await self._post(path, None, idempotency_key))

    async def log_action(
        self,
        agent_id: str | None,
        kind: str,
        *,
        detail: Any = None,
        session_id: str | None = None,
        id: str | None = None,
        idempotency_key: str | None = None,
    ) -> Action:
        body = _fields(id=id, agent_id=agent_id, kind=kind, detail=detail, session_id=session_id)
        return cast(Action, await self._post("/api/actions", body, idempotency_key))

    # --- reservations ----------------------------------------------------------------------

    async def reserve(
        self,
        paths: list[str],
        *,
        agent_id: str | None = None,
        exclusive: bool | None = None,
        ttl_seconds: int | None = None,
        reason: str | None = None,
        idempotency_key: str | None = None,
    ) -> Reservation:
        """Reserve paths (files, directories, globs); 409 RESERVATION_CONFLICT names the
        holders in `ApiError.body["conflicts"]`."""
        body = _fields(
            paths=paths,
            agent_id=agent_id,
            exclusive=exclusive,
            ttl_seconds=ttl_seconds,
            reason=reason,
        )
        return cast(Reservation, await self._post("/api/reservations", body, idempotency_key))

    async def list_reservations(
        self,
        *,
        path: str | None = None,
        agent_id: str | None = None,
        active: bool | None = None,
        limit: int | None = None,
        cursor: str | None = None,
        order: Order | None = None,
    ) -> Page[Reservation]:
        """Who holds what: active reservations (`active=False`: ended ones too), of an agent,
        or overlapping `path`."""
        params = {
            "path": path,
            "agent_id": agent_id,
            "active": active,
            "limit": limit,
            "cursor": cursor,
            "order": order,
        }
        return await self._page("/api/reservations", params)

    async def renew_reservation(
        self,
        reservation_id: str,
        *,
        ttl_seconds: int | None = None,
        idempotency_key: str | None = None,
    ) -> Reservation:
        path = f"/api/reservations/{_seg(reservation_id)}/renew"
        body = _fields(ttl_seconds=ttl_seconds)
        return cast(Reservation, await self._post(path, body, idempotency_key))

    async def release_reservation(self, reservation_id: str) -> None:
        await self.request("DELETE", f"/api/reservations/{_seg(reservation_id)}")

    # --- webhooks (admin only in token mode; docs/webhooks.md) ----------------------------

    async def create_webhook(
        self,
        url: str,
        events: list[str],
        *,
        channels: list[str] | None = None,
        description: str | None = None,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        """Register an endpoint; the answer carries its `secret`, shown this once."""
        body = _fields(url=url, events=events, channels=channels, description=description)
        return cast(dict[str, Any], await self._post("/api/webhooks", body, idempotency_key))

    async def list_webhooks(
        self, *, limit: int | None = None, cursor: str | None = None, order: Order | None = None
    ) -> Page[dict[str, Any]]:
        params = {"limit": limit, "cursor": cursor, "order": order}
        return await self._page("/api/webhooks", params)

    async def get_webhook(self, webhook_id: str) -> dict[str, Any]:
        return cast(dict[str, Any], await self.request("GET", f"/api/webhooks/{_seg(webhook_id)}"))

    async def update_webhook(
        self,
        webhook_id: str,
        *,
        url: str | None = None,
        events: list[str] | None = None,
        channels: list[str] | None = None,
        description: str | None = None,
        enabled: bool | None = None,
    ) -> dict[str, Any]:
        body = _fields(
            url=url, events=events, channels=channels, description=description, enabled=enabled
        )
        path = f"/api/webhooks/{_seg(webhook_id)}"
        return cast(dict[str, Any], await self.request("PATCH", path, json=body))

    async def delete_webhook(self, webhook_id: str) -> None:
        await self.request("DELETE", f"/api/webhooks/{_seg(webhook_id)}")

    async def rotate_webhook_secret(self, webhook_id: str) -> dict[str, Any]:
        """A new secret; the old one keeps signing beside it for the overlap (24 h)."""
        path = f"/api/webhooks/{_seg(webhook_id)}/rotate-secret"
        return cast(dict[str, Any], await self._post(path))

    async def test_webhook(self, webhook_id: str) -> dict[str, Any]:
        """Send a `webhook.test` event now, whatever the endpoint's filter."""
        return cast(dict[str, Any], await self._post(f"/api/webhooks/{_seg(webhook_id)}/test"))

    async def list_webhook_deliveries(
        self, webhook_id: str, *, limit: int | None = None, cursor: str | None = None
    ) -> Page[dict[str, Any]]:
        """One row per attempt, newest first."""
        path = f"/api/webhooks/{_seg(webhook_id)}/deliveries"
        return await self._page(path, {"limit": limit, "cursor": cursor})

    async def retry_webhook_delivery(self, webhook_id: str, delivery_id: str) -> dict[str, Any]:
        path = f"/api/webhooks/{_seg(webhook_id)}/deliveries/{_seg(delivery_id)}/retry"
        return cast(dict[str, Any], await self._post(path))


def _query_value(value: Any) -> Any:
    if isinstance(value, bool):
        return "true" if value else "false"
    return value


def _seg(value: str) -> str:
    """One path segment, escaped: an id can never reach another route."""
    return quote(value, safe="")


def _channel(value: str) -> str:
    """A channel in a path: its one `/` kept (`agents/x`), everything else escaped."""
    return quote(value, safe="/")
