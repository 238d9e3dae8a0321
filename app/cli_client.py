"""The client commands of `context-manager`: watch the stream, publish, check a running service.

    context-manager tail [CHANNEL…] [--event 'task.*'] [--json]   the live stream (reconnects)
    context-manager publish CHANNEL EVENT [DATA]                   one publication, then exit
    context-manager status                                         /health and /stats as tables

They talk to a running service over the network with the Python client (context_manager_client,
clients/python/); the addresses come from the same settings as the server's (HOST, WS_PORT,
API_PORT, DASHBOARD_PORT) or from --url / --api-url, and a token from --token or
CONTEXT_MANAGER_TOKEN.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

import httpx
from context_manager_client import (
    Backoff,
    ConnectionState,
    Event,
    RealtimeClient,
    RealtimeError,
    StateChange,
)

CLIENT_COMMANDS = frozenset({"tail", "publish", "status"})

# --- colour ------------------------------------------------------------------------------------

_RESET = "\x1b[0m"
_STYLES = {
    "dim": "\x1b[2m",
    "bold": "\x1b[1m",
    "cyan": "\x1b[36m",
    "blue": "\x1b[34m",
    "green": "\x1b[32m",
    "yellow": "\x1b[33m",
    "red": "\x1b[31m",
    "magenta": "\x1b[35m",
}
_FAMILY_STYLE = {
    "task": "blue",
    "subtask": "cyan",
    "message": "magenta",
    "agent": "green",
    "metric": "dim",
}


class Painter:
    """ANSI colours when enabled, plain text otherwise."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def __call__(self, text: str, style: str) -> str:
        if not self.enabled or style not in _STYLES:
            return text
        return f"{_STYLES[style]}{text}{_RESET}"


def use_colour(choice: str, stream: TextIO) -> bool:
    """--color auto|always|never; auto = a terminal, and NO_COLOR unset (no-color.org)."""
    if choice == "always":
        return True
    if choice == "never" or os.environ.get("NO_COLOR"):
        return False
    return stream.isatty()


def event_style(name: str) -> str:
    if name.endswith((".failed", ".expired")):
        return "red"
    return _FAMILY_STYLE.get(name.split(".", 1)[0], "yellow")


def format_event(event: Event, paint: Painter) -> str:
    """One line per event: time, channel, event, data (compact JSON)."""
    stamp = time.strftime("%H:%M:%S", time.localtime(event.timestamp / 1000))
    stamp += f".{event.timestamp % 1000:03d}"
    data = json.dumps(event.data, ensure_ascii=False, separators=(",", ":"))
    return "  ".join(
        (
            paint(stamp, "dim"),
            paint(f"{event.channel:<20}", "cyan"),
            paint(f"{event.event:<20}", event_style(event.event)),
            data,
        )
    )


# --- arguments ---------------------------------------------------------------------------------


def _add_connection_options(parser: argparse.ArgumentParser) -> None:
    # The same options on every client command, so one set of flags (or an alias) fits all.
    parser.add_argument("--host", help="host of the service (HOST, default 127.0.0.1)")
    parser.add_argument("--ws-port", type=int, help="WebSocket port (WS_PORT, default 3849)")
    parser.add_argument("--api-port", type=int, help="REST API port (API_PORT, default 3847)")
    parser.add_argument("--dashboard-port", type=int, help="dashboard port (default 3848)")
    parser.add_argument("--url", help="WebSocket URL (default ws://HOST:WS_PORT/ws)")
    parser.add_argument(
        "--token",
        default=os.environ.get("CONTEXT_MANAGER_TOKEN"),
        help="access token (CONTEXT_MANAGER_TOKEN), for AUTH_MODE=token",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        help="seconds to connect, and to wait for each answer (10)",
    )


def add_commands(commands: Any) -> None:
    """Register tail, publish and status on the `context-manager` subparsers."""
    tail = commands.add_parser(
        "tail",
        help="print the live event stream",
        description="Print events as they arrive, reconnecting (and recovering) by itself.",
    )
    tail.add_argument("channels", nargs="*", metavar="CHANNEL", help="channels (default global)")
    tail.add_argument("--event", "-e", help="only events matching this glob, e.g. 'task.*'")
    tail.add_argument("--json", action="store_true", help="one JSON frame per line")
    tail.add_argument("--agent-id", help="connect as this agent")
    tail.add_argument("--limit", "-n", type=int, help="exit after this many events")
    tail.add_argument(
        "--color", choices=["auto", "always", "never"], default="auto", help="colour (auto)"
    )
    _add_connection_options(tail)

    publish = commands.add_parser(
        "publish",
        help="publish one event",
        description="Publish EVENT on CHANNEL with DATA (JSON; '-' reads stdin), print the ack.",
    )
    publish.add_argument("channel", metavar="CHANNEL")
    publish.add_argument("event", metavar="EVENT")
    publish.add_argument("data", nargs="?", metavar="DATA", help="JSON (default {})")
    publish.add_argument("--agent-id", help="publish as this agent")
    publish.add_argument("--json", action="store_true", help="print the ack as JSON")
    _add_connection_options(publish)

    status = commands.add_parser(
        "status",
        help="health and statistics of a running service",
        description="Print /health of the API, WebSocket server and dashboard, and /stats.",
    )
    status.add_argument("--json", action="store_true", help="print the raw documents as JSON")
    _add_connection_options(status)


def _ws_url(args: argparse.Namespace, settings: Any) -> str:
    if args.url:
        return str(args.url)
    return f"ws://{_client_host(settings.host)}:{settings.ws_port}/ws"


def _client_host(host: str) -> str:
    # A wildcard bind address is where the server listens, not where a client connects.
    if host in {"0.0.0.0", "", "::"}:
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def client_settings(args: argparse.Namespace) -> Any:
    """Where the service is: HOST and the ports from the environment, overridden by options.

    The server's trust checks (AUTH_MODE on an exposed HOST, key lengths) are about running a
    server, not about reaching one, so they are not applied here.
    """
    from app.core.config import Settings

    overrides = {
        key: value
        for key in ("host", "ws_port", "api_port", "dashboard_port")
        if (value := getattr(args, key, None)) is not None
    }
    return Settings(auth_mode="open", allow_open_exposed=True, **overrides)


def run(args: argparse.Namespace, settings: Any = None) -> int:
    """Run one client command; the exit status."""
    if settings is None:
        try:
            settings = client_settings(args)
        except ValueError as exc:
            print(f"error: invalid configuration\n{exc}", file=sys.stderr)
            return 2
    command: Callable[[argparse.Namespace, Any], int] = {
        "tail": tail_command,
        "publish": publish_command,
        "status": status_command,
    }[args.command]
    try:
        return command(args, settings)
    except KeyboardInterrupt:
        return 130


# --- tail ---------------------------------------------------------------------------------------


def tail_command(args: argparse.Namespace, settings: Any) -> int:
    return asyncio.run(_tail(args, _ws_url(args, settings)))


async def _tail(args: argparse.Namespace, url: str) -> int:
    channels = list(args.channels) or ["global"]
    paint = Painter(not args.json and use_colour(args.color, sys.stdout))
    note = Painter(use_colour(args.color, sys.stderr))
    client = RealtimeClient(
        url,
        agent_id=args.agent_id,
        token=args.token,
        open_timeout=args.timeout,
        backoff=Backoff(initial=0.5, maximum=10.0),
    )

    def on_state(change: StateChange) -> None:
        if change.state is ConnectionState.CONNECTED:
            message = note(f"connected to {url} as {client.client_id}", "green")
        elif change.state is ConnectionState.RECONNECTING:
            why = f"closed with {change.code}" if change.code else change.reason or "unreachable"
            message = note(f"reconnecting in {change.delay or 0:.1f} s ({why})", "yellow")
        elif change.state is ConnectionState.OFFLINE:
            message = note(f"offline: {change.reason or change.code}", "red")
        else:
            return
        print(message, file=sys.stderr, flush=True)

    client.on_state(on_state)
    try:
        # Up to --timeout for the first connection: a wrong port or a service that is down is
        # an error, not an endless retry. Once connected, tail reconnects for as long as it runs.
        await client.connect(timeout=args.timeout)
    except RealtimeError:
        await client.close()
        reason = f", closed with {client.last_close_code}" if client.last_close_code else ""
        print(
            f"error: could not connect to {url} within {args.timeout:g} s{reason}; is the "
            "service running there? (--ws-port, --url)",
            file=sys.stderr,
        )
        return 1
    count = 0
    try:
        for channel in channels:
            subscribing = asyncio.ensure_future(client.subscribe(channel, timeout=args.timeout))
            try:
                await subscribing
            except RealtimeError as exc:
                if exc.code == "TIMEOUT":
                    # Not connected yet: the subscription stays and is sent once connected.
                    continue
                print(f"error: cannot subscribe to {channel}: {exc}", file=sys.stderr)
                return 2
            print(note(f"subscribed to {channel}", "dim"), file=sys.stderr, flush=True)
        async for event in client.events(*channels, event=args.event):
            if args.json:
                line = json.dumps(event.raw, ensure_ascii=False, separators=(",", ":"))
            else:
                line = format_event(event, paint)
            print(line, flush=True)
            count += 1
            if args.limit is not None and count >= args.limit:
                return 0
    except RealtimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        await client.close()
    return 0


# --- publish ------------------------------------------------------------------------------------


def parse_data(text: str | None) -> Any:
    """DATA as JSON; '-' reads stdin; absent means {}."""
    if text is None:
        return {}
    if text == "-":
        text = sys.stdin.read()
    try:
        return json.loads(text)
    except ValueError as exc:
        raise ValueError(f"DATA is not JSON ({exc}); a string needs quotes: '\"hello\"'") from None


def publish_command(args: argparse.Namespace, settings: Any) -> int:
    try:
        data = parse_data(args.data)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(_publish(args, _ws_url(args, settings), data))


async def _publish(args: argparse.Namespace, url: str, data: Any) -> int:
    client = RealtimeClient(
        url, agent_id=args.agent_id, token=args.token, open_timeout=args.timeout, max_retries=0
    )
    try:
        try:
            await client.connect(timeout=args.timeout)
        except RealtimeError:
            reason = f" (closed with {client.last_close_code})" if client.last_close_code else ""
            print(f"error: could not connect to {url}{reason}", file=sys.stderr)
            return 1
        try:
            ack = await client.publish(args.channel, args.event, data, timeout=args.timeout)
        except RealtimeError as exc:
            print(f"error: {exc.code}: {exc.message}", file=sys.stderr)
            return 1
    finally:
        await client.close()
    if args.json:
        print(json.dumps(ack))
    else:
        offset = f" (offset {ack['offset']})" if "offset" in ack else ""
        print(f"published {args.event} on {ack.get('channel', args.channel)}{offset}")
    return 0


# --- status -------------------------------------------------------------------------------------


def _fetch(http: httpx.Client, url: str) -> tuple[dict[str, Any] | None, str]:
    """(document, "") or (None, why it failed)."""
    try:
        response = http.get(url)
    except httpx.HTTPError as exc:
        return None, f"unreachable ({type(exc).__name__})"
    try:
        body = response.json()
    except ValueError:
        return None, f"HTTP {response.status_code}, not JSON"
    if not isinstance(body, dict):
        return None, f"HTTP {response.status_code}, unexpected body"
    if response.status_code >= 400 and "status" not in body:
        return None, f"HTTP {response.status_code}"
    return body, ""


def _table(rows: list[list[str]], header: list[str] | None = None) -> str:
    all_rows = ([header] if header else []) + rows
    widths = [max(len(row[i]) for row in all_rows) for i in range(len(all_rows[0]))]
    lines = [
        "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in all_rows
    ]
    if header:
        lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    days, seconds = divmod(seconds, 86400)
    hours, seconds = divmod(seconds, 3600)
    minutes, seconds = divmod(seconds, 60)
    parts = (
        [f"{days}d"] * bool(days) + [f"{hours}h"] * bool(hours) + [f"{minutes}m"] * bool(minutes)
    )
    return " ".join(parts + [f"{seconds}s"]) if not days else " ".join(parts)


def _health_summary(name: str, body: dict[str, Any]) -> str:
    status = str(body.get("status", "?"))
    if name == "api" and "database" in body:
        return f"{status} · database {body['database']}"
    if name == "websocket":
        return (
            f"{status} · {body.get('connectedClients', '?')} clients · "
            f"{body.get('activeChannels', '?')} channels"
        )
    return status


def status_command(args: argparse.Namespace, settings: Any) -> int:
    host = _client_host(args.host or settings.host)
    ws_port = args.ws_port or settings.ws_port
    api_port = args.api_port or settings.api_port
    dashboard_port = args.dashboard_port or settings.dashboard_port
    urls = {
        "api": f"http://{host}:{api_port}/health",
        "websocket": f"http://{host}:{ws_port}/health",
        "dashboard": f"http://{host}:{dashboard_port}/health",
    }
    headers = {"Authorization": f"Bearer {args.token}"} if args.token else {}
    with httpx.Client(timeout=args.timeout, headers=headers) as http:
        health = {name: _fetch(http, url) for name, url in urls.items()}
        stats, stats_error = _fetch(http, f"http://{host}:{ws_port}/stats")

    healthy = all(
        body is not None and body.get("status") == "healthy" for body, _ in health.values()
    )
    if args.json:
        document = {name: body or {"error": error} for name, (body, error) in health.items()}
        document["stats"] = stats or {"error": stats_error}
        print(json.dumps(document, indent=2))
        return 0 if healthy else 1

    rows = []
    for name, (body, error) in health.items():
        rows.append([name, urls[name], _health_summary(name, body) if body else error])
    print(_table(rows, ["SERVICE", "URL", "STATUS"]))
    if stats:
        connections = stats.get("connections", {})
        publications = stats.get("publications", {})
        deliveries = stats.get("deliveries", {})
        broker = stats.get("broker", {})
        print()
        print(
            _table(
                [
                    ["node", str(stats.get("node_id", "?"))],
                    ["uptime", _duration(float(stats.get("uptime_seconds", 0)))],
                    [
                        "connections",
                        f"{connections.get('current', '?')} open · "
                        f"{connections.get('opened', '?')} opened · "
                        f"{connections.get('closed', '?')} closed",
                    ],
                    ["subscriptions", str(stats.get("subscriptions", {}).get("current", "?"))],
                    [
                        "publications",
                        f"{publications.get('total', '?')} "
                        f"({float(publications.get('per_second', 0)):.1f}/s)",
                    ],
                    [
                        "deliveries",
                        f"{deliveries.get('total', '?')} "
                        f"({float(deliveries.get('per_second', 0)):.1f}/s)",
                    ],
                    ["agents online", str(stats.get("agents_online", "?"))],
                    [
                        "broker",
                        f"{broker.get('kind', '?')} "
                        f"({'healthy' if broker.get('healthy') else 'unhealthy'})",
                    ],
                ],
                ["WEBSOCKET SERVER", ""],
            )
        )
        subscribers = stats.get("channels", {}).get("subscribers", {})
        if subscribers:
            print()
            ranked = sorted(subscribers.items(), key=lambda item: (-item[1], item[0]))
            print(_table([[c, str(n)] for c, n in ranked[:20]], ["CHANNEL", "SUBSCRIBERS"]))
            if len(ranked) > 20:
                print(f"… and {len(ranked) - 20} more channels")
    elif stats_error:
        print(f"\nstats: {stats_error}")
    return 0 if healthy else 1
