"""Settings: every knob of the service, read from the environment (and `.env`).

One `Settings` object is built by the CLI (or a test) and handed to `create_app(settings)`;
nothing in the package reads the environment at import time.
"""

from __future__ import annotations

import ipaddress
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///./context-manager.db"


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
    redis_url: str | None = Field(None, description="Redis URL: enables the Redis broker.")
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

    # --- dashboard (what its pages connect to; by default this host's ports) ----------------
    dashboard_ws_url: str | None = Field(
        None, description="WebSocket URL for the dashboard (behind a proxy); default WS_PORT."
    )
    dashboard_api_url: str | None = Field(
        None, description="REST API base the dashboard uses; default its own origin (/api)."
    )

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
    def is_loopback(self) -> bool:
        """True when HOST only accepts connections from this machine."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    @property
    def broker_kind(self) -> Literal["memory", "redis", "postgres"]:
        if self.broker != "auto":
            return self.broker
        return "redis" if self.redis_url else "memory"
