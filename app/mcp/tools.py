"""The MCP tools: the team board as an agent sees it (docs/agents.md).

Each tool parses its arguments into the REST API's input models (app/schemas.py), calls the
domain layer through `Door.call` as the caller, and answers the REST API's response shape
plus `pending`. The caller is never an argument: it is the token's agent, or `?agent_id=` in
open mode. Descriptions are written for the model that reads them: what the tool does, when to
call it, what its errors mean.
"""

# No `from __future__ import annotations`: the SDK reads these signatures at registration.

from typing import Annotated, Any, Literal

from mcp.server.mcpserver import Context as ToolContext
from mcp.server.mcpserver import MCPServer
from mcp.types import CallToolResult, ToolAnnotations
from pydantic import Field

from app.db.models import TaskStatus
from app.domain import (
    agents,
    channels,
    claims,
    events,
    inbox,
    messages,
    reservations,
    subtasks,
    tasks,
)
from app.domain.context import Context
from app.mcp.door import Door, dump, with_progress
from app.realtime.history import StreamPosition
from app.schemas import (
    AgentCreate,
    AgentHeartbeat,
    ClaimRequest,
    InboxAck,
    LeaseComplete,
    LeaseFail,
    LeaseRelease,
    LeaseRenew,
    MessageCreate,
    ReservationCreate,
    SubtaskCreate,
    SubtaskUpdate,
    TaskCreate,
)

PENDING = (
    " Every result carries `pending: {unread, leases_expiring}`: when `unread` > 0 call "
    "fetch_inbox; when `leases_expiring` > 0 call heartbeat (it renews all your leases)."
)
LEASE_ERRORS = (
    " Errors: LEASE_LOST — your lease expired or another agent claimed the task after it; stop "
    "working on it, it is no longer yours. FORBIDDEN — the task is leased to another agent. "
    "NOT_FOUND — no such task."
)
MAX_LIST = 200
READ_ONLY = ToolAnnotations(read_only_hint=True, open_world_hint=False)
WRITES = ToolAnnotations(read_only_hint=False, destructive_hint=False, open_world_hint=False)

Json = Annotated[Any, Field(description="Any JSON value.")]
TaskId = Annotated[str, Field(description="The task's id (`task_…`).")]
LeaseId = Annotated[str, Field(description="The lease id claim_task returned (`lease_…`).")]


def given(**values: Any) -> dict[str, Any]:
    """The arguments the model passed (None = left out): partial updates stay partial."""
    return {key: value for key, value in values.items() if value is not None}


def register_tools(server: MCPServer[Any], door: Door) -> None:
    """Add every tool to `server`; each runs through `door`."""

    # --- agents ------------------------------------------------------------------------------

    @server.tool(
        annotations=WRITES,
        description="Join the team board, or rejoin after a restart: call this first, once per "
        "session. Idempotent: registering again updates the fields you give and changes nothing "
        "else. Returns `agent` (you), `inbox_cursor` (the last message you acknowledged: "
        "fetch_inbox without `after` continues from there), `leases` (tasks you still hold, each "
        "{task, lease}: carry on with them or release them) and `reservations` (paths you still "
        "hold). Your id is who you connected as; you cannot register as anyone else "
        "(FORBIDDEN)." + PENDING,
    )
    async def register_agent(
        ctx: ToolContext,
        name: Annotated[str | None, Field(description="A display name.")] = None,
        kind: Annotated[
            str | None, Field(description="What sort of agent, e.g. `coder`, `reviewer`.")
        ] = None,
        capabilities: Annotated[
            list[str] | None,
            Field(
                description='What you can do, e.g. ["python", "frontend"]: claim_task '
                "without capabilities offers you tasks that need only these."
            ),
        ] = None,
        summary: Annotated[str | None, Field(description="What you are working on.")] = None,
    ) -> CallToolResult:
        async def action(c: Context, me: str) -> dict[str, Any]:
            body = AgentCreate(
                **given(name=name, kind=kind, capabilities=capabilities, summary=summary)
            )
            agent, _ = await agents.register_agent(c, body)
            position = await inbox.position(c, me)
            held = await claims.leases_of(c, me)
            mine = await reservations.check(c, agent_id=me, limit=500)
            return {
                "agent": dump(agent),
                "inbox_cursor": position.acked,
                "leases": [dump(item) for item in held],
                "reservations": [dump(r) for r in mine.items],
            }

        return await door.call(ctx, action)

    @server.tool(
        annotations=WRITES,
        description="Say you are alive, and optionally what you are doing. Renews every lease "
        "you hold, so call it at least every couple of minutes during long work. NOT_FOUND: "
        "call register_agent first." + PENDING,
    )
    async def heartbeat(
        ctx: ToolContext,
        status: Annotated[
            str | None,
            Field(description="In a word: idle, working, blocked, reviewing, … (lowercase)."),
        ] = None,
        summary: Annotated[str | None, Field(description="What you are working on now.")] = None,
    ) -> CallToolResult:
        async def action(c: Context, me: str) -> dict[str, Any]:
            body = AgentHeartbeat(**given(activity=status, summary=summary))
            return {"agent": dump(await agents.heartbeat(c, me, body))}

        return await door.call(ctx, action)

    @server.tool(
        annotations=READ_ONLY,
        description="The agents on the board (oldest first), with whether each is online, its "
        "capabilities, activity and summary. Use it to find whom to message or hand work to."
        + PENDING,
    )
    async def list_agents(
        ctx: ToolContext,
        online_only: Annotated[bool, Field(description="Only agents online now.")] = False,
        capability: Annotated[
            str | None, Field(description="Only agents that have this capability.")
        ] = None,
    ) -> CallToolResult:
        async def action(c: Context, me: str) -> dict[str, Any]:
            page = await agents.list_agents(
                c, capability=capability, online_only=online_only, limit=MAX_LIST
            )
            return dump(page)  # type: ignore[no-any-return]

        return await door.call(ctx, action)

    # --- messages and the inbox --------------------------------------------------------------

    @server.tool(
        annotations=WRITES,
        description="Send a message to another agent's inbox; it is stored, so the recipient "
        "gets it even if it is offline now. You are the sender. To answer a message, pass its "
        "`thread_id` and its id as `reply_to`." + PENDING,
    )
    async def send_message(
        ctx: ToolContext,
        to_agent: Annotated[str, Field(description="The recipient's agent id.")],
        content: Annotated[str, Field(description="The message, in words.")],
        data: Annotated[Any, Field(description="Optional structured JSON payload.")] = None,
        thread_id: Annotated[
            str | None, Field(description="The conversation it belongs to (any id you choose).")
        ] = None,
        reply_to: Annotated[
            str | None, Field(description="The id of the message it answers.")
        ] = None,
        ttl_seconds: Annotated[
            int | None, Field(description="Expire it unread after this many seconds.")
        ] = None,
    ) -> CallToolResult:
        async def action(c: Context, me: str) -> dict[str, Any]:
            body = MessageCreate(
                to_agent=to_agent,
                content=content,
                **given(data=data, thread_id=thread_id, reply_to=reply_to, ttl_seconds=ttl_seconds),
            )
            return {"message": dump(await messages.send_message(c, body))}

        return await door.call(ctx, action)

    @server.tool(
        annotations=READ_ONLY,
        description="Read your inbox: messages to you after position `after` (default: after "
        "the last one you acknowledged), oldest first, and `cursor` (the seq of the last one "
        "returned). Reading marks nothing: once you have handled them call ack_messages(up_to="
        "cursor), or they come back after a restart. Returns at once, empty if nothing is "
        "there; to wait for mail use wait_for_messages." + PENDING,
    )
    async def fetch_inbox(
        ctx: ToolContext,
        after: Annotated[
            int | None, Field(description="Messages after this seq (default: your ack).", ge=0)
        ] = None,
        limit: Annotated[
            int, Field(description="At most this many.", ge=1, le=inbox.MAX_LIMIT)
        ] = 50,
    ) -> CallToolResult:
        async def action(c: Context, me: str) -> dict[str, Any]:
            return dump(await inbox.read(c, me, after, limit))  # type: ignore[no-any-return]

        return await door.call(ctx, action)

    @server.tool(
        annotations=READ_ONLY,
        description="Wait for mail: returns at once when messages after `after` (default: "
        "your acknowledged position) are waiting, else as soon as one arrives, or empty after "
        "`timeout_seconds`. Call it when you are idle or waiting for an answer, in a loop. "
        "Same result as fetch_inbox; acknowledge with ack_messages." + PENDING,
    )
    async def wait_for_messages(
        ctx: ToolContext,
        after: Annotated[
            int | None, Field(description="Messages after this seq (default: your ack).", ge=0)
        ] = None,
        timeout_seconds: Annotated[
            float, Field(description="How long to wait (at most 50).", ge=0, le=inbox.MAX_WAIT)
        ] = 25,
    ) -> CallToolResult:
        async def action(c: Context, me: str) -> dict[str, Any]:
            work = inbox.read(c, me, after, 100, timeout_seconds)
            page = await with_progress(ctx, work, "waiting for messages")
            return dump(page)  # type: ignore[no-any-return]

        return await door.call(ctx, action)

    @server.tool(
        annotations=WRITES,
        description="Acknowledge your messages up to seq `up_to` (a fetch's `cursor`): they "
        "will not be delivered again, after a restart either. It only moves forward. "
        "INVALID_CURSOR: `up_to` is past your newest message." + PENDING,
    )
    async def ack_messages(
        ctx: ToolContext,
        up_to: Annotated[int, Field(description="The seq handled up to (inclusive).", ge=0)],
    ) -> CallToolResult:
        async def action(c: Context, me: str) -> dict[str, Any]:
            body = InboxAck(up_to=up_to)
            return dump(await inbox.ack(c, me, body.up_to))  # type: ignore[no-any-return]

        return await door.call(ctx, action)

    # --- tasks and claims --------------------------------------------------------------------

    @server.tool(
        annotations=WRITES,
        description="Put a task on the board (pending) for any agent to claim. `depends_on`: "
        "tasks that must complete first (it becomes claimable when they have); `capabilities`: "
        "what its claimer must have. Returns the task with its id. Errors: INVALID (an unknown "
        "dependency or a cycle)." + PENDING,
    )
    async def create_task(
        ctx: ToolContext,
        title: Annotated[str, Field(description="What is to be done, in one line.")],
        description: Annotated[
            str | None, Field(description="Details, acceptance criteria.")
        ] = None,
        priority: Annotated[
            int | None, Field(description="Higher is claimed first (default 0).")
        ] = None,
        depends_on: Annotated[
            list[str] | None, Field(description="Ids of tasks that must complete first.")
        ] = None,
        capabilities: Annotated[
            list[str] | None, Field(description="Capabilities a claimer must have, all of them.")
        ] = None,
        session_id: Annotated[str | None, Field(description="The session it belongs to.")] = None,
        payload: Annotated[Any, Field(description="Structured JSON input for the worker.")] = None,
    ) -> CallToolResult:
        async def action(c: Context, me: str) -> dict[str, Any]:
            body = TaskCreate(
                title=title,
                **given(
                    description=description,
                    priority=priority,
                    depends_on=depends_on,
                    capabilities=capabilities,
                    session_id=session_id,
                    payload=payload,
                ),
            )
            return {"task": dump(await tasks.create_task(c, body))}

        return await door.call(ctx, action)

    @server.tool(
        annotations=READ_ONLY,
        description="Tasks on the board, oldest first. `ready_only`: only tasks you could claim "
        "now (pending, dependencies completed). `agent_id`: tasks assigned to that agent."
        + PENDING,
    )
    async def list_tasks(
        ctx: ToolContext,
        status: Annotated[
            Literal["pending", "in_progress", "completed", "failed", "cancelled"] | None,
            Field(description="Only tasks in this status."),
        ] = None,
        ready_only: Annotated[bool, Field(description="Only claimable tasks.")] = False,
        agent_id: Annotated[
            str | None, Field(description="Only tasks assigned to this agent.")
        ] = None,
        limit: Annotated[int, Field(description="At most this many.", ge=1, le=MAX_LIST)] = 50,
    ) -> CallToolResult:
        async def action(c: Context, me: str) -> dict[str, Any]:
            page = await tasks.list_tasks(
                c,
                status=TaskStatus(status) if status else None,
                agent_id=agent_id,
                ready=ready_only,
                limit=limit,
            )
            return dump(page)  # type: ignore[no-any-return]

        return await door.call(ctx, action)

    @server.tool(
        annotations=WRITES,
        description="Take the next task to work on: the highest-priority ready task whose "
        "capabilities you have (default: those you registered) becomes yours under a lease. "
        "Returns {task, lease}; both null when nothing is ready (with `wait_seconds`, after "
        "waiting that long for one). Keep the lease alive (heartbeat or renew_lease) and end it "
        "with complete_task, fail_task or release_task, passing task.id and lease.id." + PENDING,
    )
    async def claim_task(
        ctx: ToolContext,
        capabilities: Annotated[
            list[str] | None,
            Field(description="Claim only tasks these capabilities cover (default: yours)."),
        ] = None,
        lease_seconds: Annotated[
            int | None, Field(description="Lease length, 1-3600 s (default 300).")
        ] = None,
        wait_seconds: Annotated[
            float | None, Field(description="Wait up to this long (max 50) for a task.")
        ] = None,
    ) -> CallToolResult:
        async def action(c: Context, me: str) -> dict[str, Any]:
            body = ClaimRequest(
                **given(
                    capabilities=capabilities,
                    lease_seconds=lease_seconds,
                    wait_seconds=wait_seconds,
                )
            )
            if body.wait_seconds > 0:
                claimed = await with_progress(ctx, claims.claim(c, body), "waiting for a task")
            else:
                claimed = await claims.claim(c, body)
            if claimed is None:
                return {"task": None, "lease": None}
            return dump(claimed)  # type: ignore[no-any-return]

        return await door.call(ctx, action)

    @server.tool(
        annotations=WRITES,
        description="Extend your lease on a task by its length again (heartbeat renews all of "
        "them at once)." + LEASE_ERRORS + PENDING,
    )
    async def renew_lease(ctx: ToolContext, task_id: TaskId, lease_id: LeaseId) -> CallToolResult:
        async def action(c: Context, me: str) -> dict[str, Any]:
            body = LeaseRenew(lease_id=lease_id)
            return {"task": dump(await claims.renew(c, task_id, body.lease_id, None))}

        return await door.call(ctx, action)

    @server.tool(
        annotations=WRITES,
        description="Finish a task you claimed, with its result; tasks that depend on it "
        "become claimable." + LEASE_ERRORS + PENDING,
    )
    async def complete_task(
        ctx: ToolContext,
        task_id: TaskId,
        lease_id: LeaseId,
        result: Annotated[Any, Field(description="What you produced (any JSON).")] = None,
    ) -> CallToolResult:
        async def action(c: Context, me: str) -> dict[str, Any]:
            body = LeaseComplete(lease_id=lease_id, result=result)
            return {"task": dump(await claims.complete(c, task_id, body.lease_id, body.result))}

        return await door.call(ctx, action)

    @server.tool(
        annotations=WRITES,
        description="Give up on a task you claimed because it failed. With `retry` (default) "
        "it goes back to pending while attempts are left, else it fails for good (and tasks "
        "depending on it are cancelled)." + LEASE_ERRORS + PENDING,
    )
    async def fail_task(
        ctx: ToolContext,
        task_id: TaskId,
        lease_id: LeaseId,
        error: Annotated[str, Field(description="What went wrong.")],
        retry: Annotated[bool, Field(description="Let another attempt be made.")] = True,
    ) -> CallToolResult:
        async def action(c: Context, me: str) -> dict[str, Any]:
            body = LeaseFail(lease_id=lease_id, error=error, retry=retry)
            task = await claims.fail(c, task_id, body.lease_id, body.error, body.retry)
            return {"task": dump(task)}

        return await door.call(ctx, action)

    @server.tool(
        annotations=WRITES,
        description="Hand a task you claimed back untouched (pending again, the attempt not "
        "counted), e.g. when you cannot do it after all." + LEASE_ERRORS + PENDING,
    )
    async def release_task(ctx: ToolContext, task_id: TaskId, lease_id: LeaseId) -> CallToolResult:
        async def action(c: Context, me: str) -> dict[str, Any]:
            body = LeaseRelease(lease_id=lease_id)
            return {"task": dump(await claims.release(c, task_id, body.lease_id))}

        return await door.call(ctx, action)

    @server.tool(
        annotations=WRITES,
        description="Add a step (subtask) to a task, to show your plan and progress. FORBIDDEN: "
        "the task is assigned to another agent." + PENDING,
    )
    async def add_subtask(
        ctx: ToolContext,
        task_id: TaskId,
        title: Annotated[str, Field(description="The step, in one line.")],
    ) -> CallToolResult:
        async def action(c: Context, me: str) -> dict[str, Any]:
            body = SubtaskCreate(title=title)
            return {"subtask": dump(await subtasks.create_subtask(c, task_id, body))}

        return await door.call(ctx, action)

    @server.tool(
        annotations=WRITES,
        description="Move a subtask on: pending → in_progress → completed | failed | "
        "cancelled. ILLEGAL_TRANSITION / FINISHED: that move is not allowed from its status."
        + PENDING,
    )
    async def update_subtask(
        ctx: ToolContext,
        subtask_id: Annotated[str, Field(description="The subtask's id (`subtask_…`).")],
        status: Annotated[
            Literal["pending", "in_progress", "completed", "failed", "cancelled"],
            Field(description="Its new status."),
        ],
        result: Annotated[Any, Field(description="What the step produced (any JSON).")] = None,
    ) -> CallToolResult:
        async def action(c: Context, me: str) -> dict[str, Any]:
            body = SubtaskUpdate(status=TaskStatus(status), **given(result=result))
            return {"subtask": dump(await subtasks.update_subtask(c, subtask_id, body))}

        return await door.call(ctx, action)

    # --- path reservations -------------------------------------------------------------------

    @server.tool(
        annotations=WRITES,
        description="Reserve files, directories or globs (`src/api/**`) before you edit them, "
        "so other agents know to keep off. All or nothing: RESERVATION_CONFLICT means another "
        "agent holds an overlapping reservation (listed in `conflicts`, with who and why) and "
        "nothing was reserved — work elsewhere, or message the holder. Release with "
        "release_paths when done; it expires after `ttl_seconds` otherwise." + PENDING,
    )
    async def reserve_paths(
        ctx: ToolContext,
        paths: Annotated[
            list[str], Field(description="Paths or globs, relative to the workspace.")
        ],
        exclusive: Annotated[
            bool, Field(description="false: shared (only others' exclusive ones conflict).")
        ] = True,
        ttl_seconds: Annotated[
            int | None, Field(description="Expire after (default 3600).")
        ] = None,
        reason: Annotated[str | None, Field(description="Why, for whoever runs into it.")] = None,
    ) -> CallToolResult:
        async def action(c: Context, me: str) -> dict[str, Any]:
            body = ReservationCreate(
                paths=paths, exclusive=exclusive, **given(ttl_seconds=ttl_seconds, reason=reason)
            )
            return {"reservation": dump(await reservations.reserve(c, body))}

        return await door.call(ctx, action)

    @server.tool(
        annotations=WRITES,
        description="Release a reservation you hold (releasing one that ended does nothing). "
        "FORBIDDEN: it is another agent's." + PENDING,
    )
    async def release_paths(
        ctx: ToolContext,
        reservation_id: Annotated[str, Field(description="The reservation's id (`res_…`).")],
    ) -> CallToolResult:
        async def action(c: Context, me: str) -> dict[str, Any]:
            await reservations.release(c, reservation_id)
            return {"reservation_id": reservation_id, "released": True}

        return await door.call(ctx, action)

    @server.tool(
        annotations=READ_ONLY,
        description="Who holds what: for each path or glob, the active reservations that "
        "overlap it (empty: free). Check before you start on files." + PENDING,
    )
    async def check_paths(
        ctx: ToolContext,
        paths: Annotated[
            list[str], Field(description="Paths or globs to check.", min_length=1, max_length=100)
        ],
    ) -> CallToolResult:
        async def action(c: Context, me: str) -> dict[str, Any]:
            found = []
            for path in paths:
                page = await reservations.check(c, path=path, limit=500)
                found.append({"path": path, "reservations": [dump(r) for r in page.items]})
            return {"paths": found}

        return await door.call(ctx, action)

    # --- channels ----------------------------------------------------------------------------

    @server.tool(
        annotations=WRITES,
        description="Publish an event on a channel, as a WebSocket client would: `topics/<name>` "
        "for anything, `agents/<id>` to reach one agent's listeners, your session's channel. "
        "Events are `word.word` (e.g. `build.finished`); events the server emits (task.*, "
        "message.*, agent.*) are refused (FORBIDDEN)." + PENDING,
    )
    async def publish(
        ctx: ToolContext,
        channel: Annotated[str, Field(description="e.g. `topics/builds`.")],
        event: Annotated[str, Field(description="e.g. `build.finished`.")],
        data: Annotated[Any, Field(description="Any JSON payload.")] = None,
    ) -> CallToolResult:
        async def action(c: Context, me: str) -> dict[str, Any]:
            published = await events.publish_event(c, channel, event, data)
            return dump(published)  # type: ignore[no-any-return]

        return await door.call(ctx, action)

    @server.tool(
        annotations=READ_ONLY,
        description="Read a channel's retained events (history), oldest first: `global` (every "
        "task and agent event), `topics/<name>`, `agents/<you>`, … Page on with `since_offset` "
        "= the last offset you got. `recovered` false: events after `since_offset` were "
        "trimmed, you see what is left." + PENDING,
    )
    async def read_channel(
        ctx: ToolContext,
        channel: Annotated[str, Field(description="e.g. `global`, `topics/builds`.")],
        since_offset: Annotated[
            int | None, Field(description="Only events after this offset.", ge=0)
        ] = None,
        limit: Annotated[
            int, Field(description="At most this many.", ge=1, le=channels.HISTORY_LIMIT)
        ] = 100,
    ) -> CallToolResult:
        async def action(c: Context, me: str) -> dict[str, Any]:
            since = None
            if since_offset is not None:
                # The offset is in the stream's current epoch (the agent never saw another).
                _, top = await channels.read_history(c, channel, None, 0)
                since = StreamPosition(since_offset, top.position.epoch)
            readable, page = await channels.read_history(c, channel, since, limit)
            return channels.history_out(readable, page)

        return await door.call(ctx, action)
