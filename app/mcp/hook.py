"""`context-manager inbox --hook`: unread mail in the shape a Claude Code hook returns.

A hook (UserPromptSubmit, SessionStart, PostToolUse) runs a command and adds its
`hookSpecificOutput.additionalContext` to what the model reads, so an agent that never calls
a tool still hears its mail:

    {"hookSpecificOutput": {"hookEventName": "UserPromptSubmit",
                            "additionalContext": "context-manager: 2 unread messages …"}}

With nothing unread it prints nothing (the hook adds nothing). The mail comes from the REST
API (GET /api/agents/{id}/inbox: what follows the acknowledged position); `--ack`
acknowledges what was shown, for agents that never call ack_messages.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import httpx
import orjson

DEFAULT_URL = "http://127.0.0.1:3847"  # CONTEXT_MANAGER_URL's default, here and for `mcp`
MAX_SHOWN = 20
MAX_CONTENT = 2000


class HookError(Exception):
    """The inbox could not be read (the message says why)."""


def fetch_unread(
    url: str, token: str | None, agent_id: str, ack: bool, timeout: float
) -> list[dict[str, Any]]:
    """The messages after `agent_id`'s acknowledged position (acknowledged too with `ack`)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    base = f"{url.rstrip('/')}/api/agents/{quote(agent_id, safe='')}/inbox"
    try:
        with httpx.Client(headers=headers, timeout=timeout) as client:
            response = client.get(base, params={"limit": MAX_SHOWN + 1})
            if response.status_code != 200:
                raise HookError(f"GET {base}: {response.status_code} {_detail(response)}")
            messages: list[dict[str, Any]] = response.json()["messages"]
            if ack and messages:
                shown = messages[:MAX_SHOWN]
                done = client.post(f"{base}/ack", json={"up_to": shown[-1]["seq"]})
                if done.status_code != 200:
                    raise HookError(f"POST {base}/ack: {done.status_code} {_detail(done)}")
    except httpx.HTTPError as exc:
        raise HookError(f"{url} could not be reached: {exc}") from None
    return messages


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200]
    return str(body.get("detail") or body) if isinstance(body, dict) else str(body)


def context_text(agent_id: str, messages: list[dict[str, Any]], acked: bool) -> str:
    """The words the model reads: who wrote what, and what to do next."""
    shown = messages[:MAX_SHOWN]
    count = f"{len(shown)}{'+' if len(messages) > MAX_SHOWN else ''}"
    plural = "" if len(messages) == 1 else "s"
    lines = [f"context-manager: {count} unread message{plural} for {agent_id}:"]
    for message in shown:
        content = message.get("content") or ""
        if len(content) > MAX_CONTENT:
            content = content[:MAX_CONTENT] + " …"
        where = f", thread {message['thread_id']}" if message.get("thread_id") else ""
        lines.append(
            f"- [seq {message['seq']}, id {message['id']}] from {message['from_agent']}"
            f"{where}: {content}"
        )
    if len(messages) > MAX_SHOWN:
        lines.append("More are waiting: call fetch_inbox.")
    if not acked:
        last = shown[-1]["seq"]
        lines.append(f"Once handled, call ack_messages(up_to={last}) so they are not shown again.")
    return "\n".join(lines)


def hook_output(
    url: str,
    token: str | None,
    agent_id: str,
    *,
    event: str = "UserPromptSubmit",
    ack: bool = False,
    timeout: float = 5.0,
) -> str:
    """The hook's stdout: the JSON with the unread mail, or "" when there is none."""
    messages = fetch_unread(url, token, agent_id, ack, timeout)
    if not messages:
        return ""
    body = {
        "hookSpecificOutput": {
            "hookEventName": event,
            "additionalContext": context_text(agent_id, messages, ack),
        }
    }
    return orjson.dumps(body).decode()
