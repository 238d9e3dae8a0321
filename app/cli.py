"""`context-manager`: the command line.

    context-manager serve       REST API (3847) + WebSocket server (3849) + dashboard (3848)
    context-manager ws          the WebSocket server alone (the seed's `bun run ws`)
    context-manager api         the REST API alone
    context-manager dashboard   the dashboard alone (it connects to WS_PORT)
    context-manager tail | publish | status   client commands (app/cli_client.py)
    context-manager migrate     apply the database migrations (alembic upgrade head)
    context-manager mcp         the MCP tools over stdio, relayed to a running service
    context-manager inbox       an agent's unread mail (--hook: as a Claude Code hook's output)

Every option has an environment variable (see `Settings`); options win over the environment.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

from app import __version__, cli_client
from app.core.config import MAKE_SECRET_KEY, Settings
from app.core.logging import setup_logging

SERVE_COMMANDS: dict[str, tuple[str, ...]] = {
    "serve": ("api", "ws", "dashboard"),
    "ws": ("ws",),
    "api": ("api",),
    "dashboard": ("dashboard",),
}


def _add_server_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", help="bind address (HOST, default 127.0.0.1)")
    parser.add_argument("--ws-port", type=int, help="WebSocket port (WS_PORT, default 3849)")
    parser.add_argument("--api-port", type=int, help="REST API port (API_PORT, default 3847)")
    parser.add_argument(
        "--dashboard-port", type=int, help="dashboard port (DASHBOARD_PORT, default 3848)"
    )
    parser.add_argument("--database-url", help="database URL (DATABASE_URL, default SQLite file)")
    parser.add_argument("--redis-url", help="Redis URL (REDIS_URL): enables the Redis broker")
    parser.add_argument("--log-level", help="debug, info, warning, error (LOG_LEVEL, default info)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="context-manager",
        description="Real-time coordination service for teams of AI agents.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    helps = {
        "serve": "run the REST API, the WebSocket server and the dashboard",
        "ws": "run the WebSocket server alone",
        "api": "run the REST API alone",
        "dashboard": "run the dashboard alone",
    }
    for name, text in helps.items():
        _add_server_options(commands.add_parser(name, help=text, description=text))
    _add_token_command(commands)
    _add_agent_commands(commands)
    cli_client.add_commands(commands)
    migrate = commands.add_parser(
        "migrate",
        help="apply the database migrations",
        description="Upgrade the database to the latest schema (or to/down to --revision).",
    )
    migrate.add_argument("--database-url", help="database URL (DATABASE_URL)")
    migrate.add_argument("--revision", default="head", help="target revision (default head)")
    migrate.add_argument(
        "--downgrade", action="store_true", help="downgrade to --revision (e.g. base)"
    )
    return parser


def _add_token_command(commands: Any) -> None:
    token = commands.add_parser("token", help="mint access tokens (AUTH_MODE=token)")
    actions = token.add_subparsers(dest="token_command", required=True, metavar="ACTION")
    create = actions.add_parser(
        "create",
        help="print a signed token",
        description="Print a token signed with SECRET_KEY (or JWT_PRIVATE_KEY).",
    )
    create.add_argument("--agent", required=True, help="agent id (the token's subject)")
    create.add_argument(
        "--role", default="agent", choices=["agent", "dashboard", "admin"], help="default agent"
    )
    create.add_argument("--session", help="session id the agent works in")
    create.add_argument("--ttl", type=float, default=3600, help="seconds of validity (3600)")


def _token_create(args: argparse.Namespace) -> int:
    from app.core.security import Role, TokenCodec, TokenError

    # Minting needs only the key: do not insist on AUTH_MODE=token for this process.
    settings = Settings(auth_mode="open", allow_open_exposed=True)
    if settings.jwt_algorithm == "HS256":
        key = settings.secret_key.get_secret_value() if settings.secret_key else ""
        if len(key) < 32:
            # The server refuses such a key, so a token signed with it would never be accepted.
            problem = f"SECRET_KEY has {len(key)} characters" if key else "no signing key"
            print(
                f"error: {problem}: token create signs with SECRET_KEY, the server's key "
                f"(32+ characters). Set the same one for both; make one with: {MAKE_SECRET_KEY}",
                file=sys.stderr,
            )
            return 2
    try:
        token = TokenCodec(settings).create(
            args.agent, role=Role(args.role), ttl=args.ttl, session_id=args.session
        )
    except TokenError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(token)
    return 0


# --- agent-side commands (app/mcp/): they talk to a running service, like any client -------

AGENT_COMMANDS = ("mcp", "inbox")


def _add_agent_commands(commands: Any) -> None:
    """`mcp` and `inbox`: environment CONTEXT_MANAGER_URL, _TOKEN, _AGENT_ID (docs/agents.md)."""
    from app.mcp.hook import DEFAULT_URL

    def common(parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--url", help=f"the service (CONTEXT_MANAGER_URL, default {DEFAULT_URL})"
        )
        parser.add_argument("--token", help="bearer token (CONTEXT_MANAGER_TOKEN)")
        parser.add_argument("--agent", help="this agent's id (CONTEXT_MANAGER_AGENT_ID; open mode)")

    mcp = commands.add_parser(
        "mcp",
        help="serve the MCP tools over stdio (an agent launches it)",
        description="Serve the MCP tools on stdin/stdout, relaying every call to the running "
        "service's /mcp: the same tools and results as its Streamable HTTP endpoint.",
    )
    common(mcp)
    inbox = commands.add_parser(
        "inbox",
        help="print an agent's unread messages",
        description="Print the messages after the agent's acknowledged position.",
    )
    common(inbox)
    inbox.add_argument(
        "--hook",
        action="store_true",
        help="print them as a Claude Code hook's JSON (hookSpecificOutput.additionalContext)",
    )
    inbox.add_argument(
        "--event",
        default="UserPromptSubmit",
        help="the hook's event name (UserPromptSubmit, SessionStart, PostToolUse)",
    )
    inbox.add_argument("--ack", action="store_true", help="acknowledge what is printed")


def _agent_target(args: argparse.Namespace) -> tuple[str, str | None, str | None]:
    import os

    from app.mcp.hook import DEFAULT_URL

    url = args.url or os.environ.get("CONTEXT_MANAGER_URL") or DEFAULT_URL
    token = args.token or os.environ.get("CONTEXT_MANAGER_TOKEN") or None
    agent = args.agent or os.environ.get("CONTEXT_MANAGER_AGENT_ID") or None
    return url, token, agent


def _run_agent_command(args: argparse.Namespace) -> int:
    url, token, agent = _agent_target(args)
    if args.command == "mcp":
        from app.mcp.stdio import serve

        # stdout is the protocol: logs go to stderr, and only warnings.
        logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
        try:
            asyncio.run(serve(url, token, agent))
        except KeyboardInterrupt:
            pass
        return 0
    from app.mcp.hook import HookError, context_text, fetch_unread, hook_output

    if agent is None:
        agent = _token_subject(token)
    if agent is None:
        print("error: say which agent: --agent ID (or CONTEXT_MANAGER_AGENT_ID)", file=sys.stderr)
        return 2
    try:
        if args.hook:
            output = hook_output(url, token, agent, event=args.event, ack=args.ack)
        else:
            messages = fetch_unread(url, token, agent, args.ack, 5.0)
            output = context_text(agent, messages, args.ack) if messages else ""
    except HookError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if output:
        print(output)
    return 0


def _token_subject(token: str | None) -> str | None:
    """The agent a token names (read, not verified: the service verifies it)."""
    if not token:
        return None
    import jwt

    try:
        subject = jwt.decode(token, options={"verify_signature": False}).get("sub")
    except jwt.PyJWTError:
        return None
    return subject if isinstance(subject, str) else None


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Settings from the environment, overridden by the options given."""
    overrides: dict[str, Any] = {
        key: value
        for key in (
            "host",
            "ws_port",
            "api_port",
            "dashboard_port",
            "database_url",
            "redis_url",
            "log_level",
        )
        if (value := getattr(args, key, None)) is not None
    }
    return Settings(**overrides)


def _banner(settings: Settings, surfaces: Sequence[str]) -> str:
    lines = [f"context-manager {__version__}"]
    if "api" in surfaces:
        lines.append(f"  REST API    http://{settings.host}:{settings.api_port}/api")
        lines.append(f"  API docs    http://{settings.host}:{settings.api_port}/docs")
    if "ws" in surfaces:
        lines.append(f"  WebSocket   ws://{settings.host}:{settings.ws_port}/  (also /ws)")
        lines.append(f"  WS health   http://{settings.host}:{settings.ws_port}/health")
    if "dashboard" in surfaces:
        lines.append(f"  dashboard   http://{settings.host}:{settings.dashboard_port}/dashboard")
        lines.append(f"  live events http://{settings.host}:{settings.dashboard_port}/live")
    lines.append(f"  database    {_redact(settings.database_url)}")
    lines.append(f"  broker      {settings.broker_kind}")
    return "\n".join(lines)


_SECRET_FIELD_PARTS = ("key", "secret", "token", "url")  # never echo what may hold a password


def explain_settings_error(error: ValidationError) -> list[str]:
    """One line per problem, naming the variable to set (not pydantic's multi-line dump)."""
    lines = []
    for problem in error.errors(include_url=False):
        message = str(problem["msg"]).removeprefix("Value error, ")
        location = [str(part) for part in problem["loc"]]
        if not location:  # a rule over several settings: its message names them
            lines.append(message)
            continue
        name = location[0]
        variable = name.upper()
        value = problem.get("input")
        if any(part in name for part in _SECRET_FIELD_PARTS) or not isinstance(
            value, str | int | float
        ):
            lines.append(f"{variable}: {message}")
        else:
            lines.append(f"{variable}={value!r}: {message}")
    return lines


def _invalid_configuration(error: ValidationError) -> int:
    for line in explain_settings_error(error):
        print(f"error: invalid configuration: {line}", file=sys.stderr)
    return 2


def _redact(url: str) -> str:
    """The URL without its password, for printing."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - an unparsable URL fails later with its own error
        return "<unparsable URL>"


def _run(surfaces: Sequence[str], settings: Settings) -> int:
    from app.server import Service, StartupError

    setup_logging(settings.log_level, settings.log_format)
    print(_banner(settings, surfaces), file=sys.stderr, flush=True)

    async def main() -> None:
        await Service(settings, surfaces).run()

    try:
        import uvloop

        loop_factory: Any = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - uvloop is not built for every platform
        loop_factory = None
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            runner.run(main())
    except StartupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as exc:  # noqa: BLE001 - a command line reports, it does not trace
        logging.getLogger("context_manager").debug("start-up failed", exc_info=True)
        detail = str(exc) or type(exc).__name__
        print(f"error: could not start: {detail}", file=sys.stderr)
        print(f"  database: {_redact(settings.database_url)}", file=sys.stderr)
        return 1
    return 0


def _migrate(settings: Settings, revision: str, downgrade: bool) -> int:
    from app.db.engine import create_engine
    from app.db.migrate import current_revision, migrate

    async def run() -> str | None:
        engine = create_engine(settings.database_url)
        try:
            await migrate(engine, revision, downgrade=downgrade)
            return await current_revision(engine)
        finally:
            await engine.dispose()

    try:
        now_at = asyncio.run(run())
    except Exception as exc:  # noqa: BLE001 - a command line reports, it does not trace
        print(f"error: migration failed: {exc}", file=sys.stderr)
        return 1
    print(f"{_redact(settings.database_url)} is at revision {now_at or 'base'}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; its exit status."""
    try:
        status = _main(argv)
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader left (`context-manager status --json | head`): stop quietly, as cat does.
        # Point stdout at /dev/null so the interpreter's last flush cannot fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    return status


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command in cli_client.CLIENT_COMMANDS:
        try:
            client_settings = cli_client.client_settings(args)
        except ValidationError as exc:
            return _invalid_configuration(exc)
        return cli_client.run(args, client_settings)
    if args.command in AGENT_COMMANDS:
        return _run_agent_command(args)
    try:
        settings = settings_from_args(args)
    except ValidationError as exc:
        return _invalid_configuration(exc)
    if args.command == "token":
        return _token_create(args)

    if args.command == "migrate":
        return _migrate(settings, args.revision, args.downgrade)
    if args.command in SERVE_COMMANDS:
        return _run(SERVE_COMMANDS[args.command], settings)
    parser.error(f"unknown command {args.command}")
    return 2  # pragma: no cover


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
