"""Settings: every knob of the service, read from the environment (and `.env`).

One `Settings` object is built by the CLI (or a test) and handed to `create_app(settings)`;
nothing in the package reads the environment at import time.
"""

from __future__ import annotations

import ipaddress
import json
from typing import Annotated, Literal
from urllib.parse import parse_qsl, urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///./context-manager.db"
# What the error messages and the README suggest for a good SECRET_KEY (43 URL-safe characters).
MAKE_SECRET_KEY = "python3 -c 'import secrets; print(secrets.token_urlsafe(32))'"


class Settings(BaseSettings):
    """Configuration of one node. Environment variable names are the field names, upper-cased."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", case_sensitive=False)

    # --- where it listens (the seed's names: HOST, WS_PORT) ---------------------------------
    host: str = Field("127.0.0.1", description="Bind address of every server.")
    ws_port: int = Field(3849, ge=0, le=65535, description="WebSocket server port.")
    api_port: int = Field(3847, ge=0, le=65535, description="REST API port.")
    dashboard_port: int = Field(3848, ge=0, le=65535, description="Dashboard port.")

    # --- storage and fan-out ----------------------------------------------------------------
    database_url: str = Field(
        DEFAULT_DATABASE_URL,
        description="SQLAlchemy URL; postgresql:// is accepted and mapped to asyncpg.",
    )
    redis_url: str | None = Field(
        None,
        description="Redis URL: enables the Redis broker. Several, comma-separated: shards; "
        "`?cluster=true`: a Redis Cluster node.",
    )
    redis_shards: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Redis URLs to shard channels over (comma-separated; instead of REDIS_URL).",
    )
    redis_cluster_url: str | None = Field(
        None, description="A Redis Cluster node's URL: shard over its masters, sharded pub/sub."
    )
    broker: Literal["auto", "memory", "redis", "postgres"] = Field(
        "auto", description="Fan-out between nodes; auto = redis when REDIS_URL is set."
    )
    node_id: str | None = Field(None, description="Name of this node; random when unset.")
    broker_prefix: str = Field(
        "cm",
        pattern=r"^[A-Za-z0-9_.:-]{1,40}$",
        description="Namespace of the broker's Redis keys / PostgreSQL rows; one per cluster.",
    )
    node_heartbeat_interval: float = Field(
        5.0, gt=0, description="Seconds between a node's cluster heartbeats (Redis presence)."
    )
    node_ttl: float = Field(
        15.0, gt=0, description="A node silent this long is dead: its agents are disconnected."
    )

    # --- logging ----------------------------------------------------------------------------
    log_level: str = Field("info", description="debug, info, warning, error.")
    log_format: Literal["auto", "json", "text"] = Field(
        "auto", description="auto = text on a terminal, JSON otherwise."
    )

    # --- WebSocket protocol -----------------------------------------------------------------
    ws_idle_timeout: float = Field(
        60.0, gt=0, description="Close a connection that sent nothing for this many seconds."
    )
    ws_ping_interval: float = Field(
        20.0, ge=0, description="WebSocket protocol ping interval in seconds (0 = off)."
    )
    ws_ping_timeout: float = Field(
        20.0, gt=0, description="Close when a protocol ping is unanswered."
    )
    heartbeat_interval: float = Field(
        10.0, ge=0, description="At most one agent.heartbeat per agent per this many seconds."
    )
    max_message_bytes: int = Field(
        64 * 1024, gt=0, description="Largest client message answered normally (MESSAGE_TOO_LARGE)."
    )
    max_frame_bytes: int = Field(
        1024 * 1024, gt=0, description="Frames beyond this close the connection with 1009."
    )
    max_subscriptions: int = Field(256, gt=0, description="Subscriptions per connection.")
    outbound_queue_messages: int = Field(
        10_000, gt=0, description="Frames queued for one client before it counts as slow."
    )
    outbound_queue_bytes: int = Field(
        4 * 1024 * 1024, gt=0, description="Bytes queued for one client before it counts as slow."
    )
    shutdown_timeout: float = Field(
        5.0, gt=0, description="Seconds to flush and close clients on SIGTERM."
    )
    reconnect_spread: float = Field(
        5.0,
        ge=0,
        description="SIGTERM: clients are told to reconnect after a random delay up to this.",
    )
    gc_sweep_interval: float = Field(
        300.0,
        ge=0,
        description="Seconds between full collections that walk long-lived objects too "
        "(app/core/gc_policy.py; 0 = Python's default collector).",
    )

    # --- trust: authentication, origins (docs/security.md) --------------------------------
    auth_mode: Literal["open", "token"] | None = Field(
        None, description="open (default on loopback) or token (default on any other HOST)."
    )
    allow_open_exposed: bool = Field(
        False, description="Allow AUTH_MODE=open on a non-loopback HOST (not recommended)."
    )
    secret_key: SecretStr | None = Field(None, description="HS256 signing key, 32+ characters.")
    jwt_algorithm: Literal["HS256", "RS256", "ES256"] = Field(
        "HS256", description="Token algorithm."
    )
    jwt_public_key: str | None = Field(None, description="PEM (or path) verifying RS256/ES256.")
    jwt_private_key: SecretStr | None = Field(None, description="PEM (or path) for minting RS/ES.")
    jwt_leeway: float = Field(5.0, ge=0, description="Clock skew tolerated on exp, in seconds.")
    auth_timeout: float = Field(
        10.0, gt=0, description="Token mode: seconds a connection has to authenticate."
    )
    allowed_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Browser Origins allowed (WebSocket handshake and CORS); empty = any.",
    )

    # --- limits (docs/security.md) ---------------------------------------------------------
    max_connections: int = Field(10_000, gt=0, description="Open WebSocket connections per node.")
    max_connections_per_ip: int = Field(1000, gt=0, description="Per client address.")
    publish_rate: float = Field(100.0, gt=0, description="Publishes per second per connection.")
    publish_burst: int = Field(200, gt=0, description="Publish burst above the rate.")
    message_rate: float = Field(500.0, gt=0, description="Client messages per second, any type.")
    message_burst: int = Field(1000, gt=0, description="Message burst above the rate.")
    max_request_bytes: int = Field(1024 * 1024, gt=0, description="Largest REST request body.")
    rest_fast_path: bool = Field(
        True,
        description="Serve the common /api routes without FastAPI's request machinery, with the "
        "same answers (app/api/fast_path.py); false: every request through FastAPI.",
    )
    max_request_head_bytes: int = Field(
        16 * 1024, ge=1024, description="Request line + headers, any port; past it: 431, closed."
    )
    max_request_headers: int = Field(
        100, gt=0, description="Header lines of one request, any port; past it: 431, closed."
    )
    request_head_timeout: float = Field(
        10.0, gt=0, description="Seconds a request head may take to arrive; then closed (408)."
    )
    fd_reserve: int = Field(
        100,
        ge=0,
        description="File descriptors never used for client connections (RLIMIT_NOFILE minus).",
    )
    frame_rate: float = Field(
        1000.0, gt=0, description="Inbound WebSocket frames per second per connection, any kind."
    )
    frame_burst: int = Field(
        2000, gt=0, description="Frame burst above the rate; past it: close 1008."
    )
    max_message_fragments: int = Field(
        128, gt=0, description="Frames of one fragmented WebSocket message; past it: close 1008."
    )

    # --- history and recovery (per channel kind: size in publications, ttl in seconds) -----
    history_global_size: int = Field(1000, ge=0, description="Publications kept on `global`.")
    history_global_ttl: float = Field(3600, gt=0, description="Seconds `global` history is kept.")
    history_agents_size: int = Field(1000, ge=0, description="Kept per `agents/*` channel.")
    history_agents_ttl: float = Field(
        86400, gt=0, description="Seconds `agents/*` history is kept."
    )
    history_sessions_size: int = Field(1000, ge=0, description="Kept per `sessions/*` channel.")
    history_sessions_ttl: float = Field(86400, gt=0, description="Seconds `sessions/*` is kept.")
    history_topics_size: int = Field(100, ge=0, description="Kept per `topics/*` channel.")
    history_topics_ttl: float = Field(300, gt=0, description="Seconds `topics/*` history is kept.")
    history_metrics_ttl: float = Field(60, gt=0, description="`metrics` keeps its latest update.")

    # --- background tasks -------------------------------------------------------------------
    metrics_interval: float = Field(5.0, gt=0, description="Seconds between metric.update events.")
    migrate_on_start: bool | None = Field(
        None, description="Apply migrations on start; unset = only on SQLite (embedded default)."
    )
    message_sweep_interval: float = Field(
        1.0, gt=0, description="Seconds between sweeps that expire messages past their TTL."
    )
    events_retention: float = Field(
        7 * 86400,
        gt=0,
        description="Seconds outbox rows (`events`) are kept once every bridge is past them.",
    )
    long_poll_max: float = Field(
        50.0,
        gt=0,
        le=50,
        description="Longest a long poll waits (claim wait_seconds, inbox wait, MCP waits).",
    )
    lease_sweep_interval: float = Field(
        1.0, gt=0, description="Seconds between checks for expired task leases and reservations."
    )
    bridge_batch: int = Field(
        500, gt=0, le=10_000, description="Outbox rows the bridge reads per query."
    )
    bridge_poll_interval: float = Field(
        1.0, gt=0, description="Bridge re-reads the outbox at least this often (other writers)."
    )
    bridge_reconnect_max_delay: float = Field(
        5.0, gt=0, description="Cap of the bridge's LISTEN reconnect backoff, in seconds."
    )
    agent_flush_interval: float = Field(
        2.0, gt=0, description="Seconds between batched writes of agents' last_seen."
    )

    # --- webhooks (docs/webhooks.md) --------------------------------------------------------
    webhook_retry_schedule: str = Field(
        "5,300,1800,7200,18000,36000,36000",
        description="Seconds between a failed webhook attempt and the next (comma-separated, "
        "each ±10 % jitter); after the last, the delivery is given up.",
    )
    webhook_timeout: float = Field(
        10.0, gt=0, le=300, description="Seconds one webhook attempt may take, all told."
    )
    webhook_allow_private: bool = Field(
        False,
        description="Allow webhook URLs on loopback, private, link-local and metadata "
        "addresses (tests, a receiver on this host).",
    )
    webhook_disable_after: float = Field(
        5 * 86400, gt=0, description="An endpoint failing for this many seconds is disabled."
    )
    webhook_secret_overlap: float = Field(
        86400, ge=0, description="Seconds a rotated-out webhook secret keeps signing."
    )
    webhook_poll_interval: float = Field(
        1.0, gt=0, description="Webhook loops look for work at least this often (other nodes)."
    )
    webhook_concurrency: int = Field(
        16, gt=0, le=1000, description="Endpoints one node delivers to at the same time."
    )
    webhook_max_endpoints: int = Field(100, gt=0, description="Webhook endpoints at most.")
    webhook_retention: float = Field(
        7 * 86400,
        gt=0,
        description="Seconds finished webhook deliveries (and their attempts) are kept.",
    )

    # --- MCP (app/mcp/: /mcp on the API port) ---------------------------------------------
    mcp_public_url: str | None = Field(
        None,
        description="The URL agents reach the MCP endpoint at (token mode: the RFC 9728 "
        "`resource`); default http://HOST:API_PORT/mcp.",
    )
    mcp_issuer_url: str | None = Field(
        None,
        description="Token mode: who issues the tokens, as RFC 9728 metadata names it; "
        "default this service's API base URL (tokens come from `context-manager token`).",
    )

    # --- dashboard (what its pages connect to; by default this host's ports) ----------------
    dashboard_ws_url: str | None = Field(
        None, description="WebSocket URL for the dashboard (behind a proxy); default WS_PORT."
    )
    dashboard_api_url: str | None = Field(
        None, description="REST API base the dashboard uses; default its own origin (/api)."
    )

    @field_validator("allowed_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        """ALLOWED_ORIGINS may be a JSON list or a comma-separated string."""
        if isinstance(value, str):
            if value.lstrip().startswith("["):
                return json.loads(value)
            return [part.strip().rstrip("/") for part in value.split(",") if part.strip()]
        return value

    @field_validator("redis_shards", mode="before")
    @classmethod
    def _split_shards(cls, value: object) -> object:
        """REDIS_SHARDS is a comma-separated list (or a JSON list)."""
        if isinstance(value, str):
            if value.lstrip().startswith("["):
                return json.loads(value)
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @model_validator(mode="after")
    def _check_redis(self) -> Settings:
        """One Redis topology at a time, with URLs a Redis client understands."""
        given = [
            name
            for name, value in (
                ("REDIS_URL", self.redis_url),
                ("REDIS_SHARDS", self.redis_shards),
                ("REDIS_CLUSTER_URL", self.redis_cluster_url),
            )
            if value
        ]
        if len(given) > 1:
            raise ValueError(f"set one of {' and '.join(given)}, not both")
        urls = self.redis_shard_urls or ([self.redis_cluster] if self.redis_cluster else [])
        for url in urls:
            if urlsplit(url).scheme not in ("redis", "rediss"):
                raise ValueError(f"not a redis:// or rediss:// URL: {url!r}")
        if len(set(urls)) != len(urls):
            raise ValueError("the same Redis is listed twice among the shards")
        if self.redis_url and "," in self.redis_url and "cluster=true" in self.redis_url:
            raise ValueError("REDIS_URL: a Redis Cluster is named by one node's URL, not a list")
        return self

    @model_validator(mode="after")
    def _check_trust(self) -> Settings:
        """Pick the auth mode for HOST and refuse unsafe combinations, saying what to set."""
        defaulted = self.auth_mode is None
        if self.auth_mode is None:
            self.auth_mode = "open" if self.is_loopback else "token"
        if self.auth_mode == "open" and not self.is_loopback and not self.allow_open_exposed:
            raise ValueError(
                f"refusing AUTH_MODE=open on HOST={self.host}: anyone who can reach the port "
                "could act as any agent. Use AUTH_MODE=token with SECRET_KEY, or set "
                "ALLOW_OPEN_EXPOSED=true to accept the risk."
            )
        if self.auth_mode == "token":
            if self.jwt_algorithm == "HS256":
                key = self.secret_key.get_secret_value() if self.secret_key else ""
                if len(key) < 32:
                    have = f" (it has {len(key)})" if key else ""
                    what = (
                        f"SECRET_KEY of 32+ characters{have}, e.g. SECRET_KEY=$({MAKE_SECRET_KEY})"
                    )
                    if defaulted:  # the user asked for no auth mode: say where it came from
                        raise ValueError(
                            f"HOST={self.host} is not a loopback address, so AUTH_MODE is token, "
                            f"which needs {what}; or set HOST=127.0.0.1 to stay on this machine"
                        )
                    raise ValueError(f"AUTH_MODE=token needs {what}")
            elif not self.jwt_public_key:
                raise ValueError(f"JWT_ALGORITHM={self.jwt_algorithm} needs JWT_PUBLIC_KEY")
        return self

    @field_validator("database_url")
    @classmethod
    def _normalise_database_url(cls, value: str) -> str:
        """Accept the URLs people type and map them to the async drivers we ship."""
        for prefix, replacement in (
            ("postgres://", "postgresql+asyncpg://"),
            ("postgresql://", "postgresql+asyncpg://"),
            ("postgresql+psycopg2://", "postgresql+asyncpg://"),
            ("sqlite:///", "sqlite+aiosqlite:///"),
        ):
            if value.startswith(prefix):
                return replacement + value[len(prefix) :]
        return value

    @field_validator("webhook_retry_schedule")
    @classmethod
    def _check_retry_schedule(cls, value: str) -> str:
        """Comma-separated non-negative seconds (an empty string: no retries)."""
        parse_retry_schedule(value)
        return value

    @field_validator("log_level")
    @classmethod
    def _check_log_level(cls, value: str) -> str:
        level = value.lower()
        if level not in {"critical", "error", "warning", "info", "debug", "trace"}:
            raise ValueError(f"unknown log level {value!r}")
        return level

    @property
    def is_postgres(self) -> bool:
        return self.database_url.startswith("postgresql")

    @property
    def migrates_on_start(self) -> bool:
        """MIGRATE_ON_START, or by default: yes for SQLite, no for a shared PostgreSQL."""
        if self.migrate_on_start is not None:
            return self.migrate_on_start
        return not self.is_postgres

    @property
    def is_loopback(self) -> bool:
        """True when HOST only accepts connections from this machine."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    @property
    def webhook_retry_delays(self) -> tuple[float, ...]:
        """WEBHOOK_RETRY_SCHEDULE as numbers: the delay before retry 1, 2, …"""
        return parse_retry_schedule(self.webhook_retry_schedule)

    @property
    def redis_cluster(self) -> str | None:
        """The Redis Cluster node to discover the cluster from, if the broker runs on one."""
        if self.redis_cluster_url:
            return self.redis_cluster_url
        url = self.redis_url
        if url and "," not in url and ("cluster", "true") in parse_qsl(urlsplit(url).query):
            return url
        return None

    @property
    def redis_shard_urls(self) -> list[str]:
        """The standalone Redis instances channels are sharded over (one: no sharding)."""
        if self.redis_shards:
            return list(self.redis_shards)
        if self.redis_url and self.redis_cluster is None:
            return [part.strip() for part in self.redis_url.split(",") if part.strip()]
        return []

    @property
    def broker_kind(self) -> Literal["memory", "redis", "postgres"]:
        if self.broker != "auto":
            return self.broker
        return "redis" if self.redis_shard_urls or self.redis_cluster else "memory"


def parse_retry_schedule(value: str) -> tuple[float, ...]:
    """'5,300,1800' → (5.0, 300.0, 1800.0); at most 50 finite, non-negative delays."""
    parts = [part.strip() for part in value.split(",") if part.strip()]
    try:
        delays = tuple(float(part) for part in parts)
    except ValueError:
        raise ValueError(f"not a comma-separated list of seconds: {value!r}") from None
    if len(delays) > 50 or not all(0 <= delay <= 7 * 86400 for delay in delays):
        raise ValueError("at most 50 delays, each between 0 and 604800 seconds")
    return delays


def settings_table() -> str:
    """docs/configuration.md: every setting, its environment variable, default and meaning."""
    lines = [
        "# Configuration",
        "",
        "Every setting is an environment variable (or a line in `.env`); command-line options",
        "override them. Generated from `app/core/config.py` by `python -m app.core.config`;",
        "a test keeps this file and the code in step.",
        "",
        "| Variable | Default | Description |",
        "|---|---|---|",
    ]
    for name, field in Settings.model_fields.items():
        default = field.get_default(call_default_factory=True)
        if default is None:
            shown = "—"
        elif isinstance(default, list):
            shown = ", ".join(default) or "(empty)"
        else:
            shown = str(default)
        lines.append(f"| `{name.upper()}` | `{shown}` | {field.description or ''} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # pragma: no cover
    print(settings_table(), end="")
