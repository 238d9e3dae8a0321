"""Column types that behave the same on SQLite and PostgreSQL.

- `UTCDateTime`: always an aware UTC `datetime` in Python. SQLite has no time zones, so values
  are stored as naive UTC text (``YYYY-MM-DD HH:MM:SS.ffffff``, which sorts as it reads) and
  given back with UTC attached; PostgreSQL stores ``timestamptz``.
- `JSONValue`: JSON text on SQLite, ``jsonb`` on PostgreSQL (``json`` has no equality
  operator, which the change triggers need to compare rows). Python ``None`` is SQL NULL.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, DateTime
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator, TypeEngine


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp that is UTC in, UTC out, on every backend."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        value = value.astimezone(UTC)
        # SQLite would keep the offset out of the text but not convert: store naive UTC.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class JSONValue(TypeDecorator[Any]):
    """Any JSON value; SQL NULL for Python None."""

    impl = JSON(none_as_null=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(JSONB(none_as_null=True))
        return dialect.type_descriptor(JSON(none_as_null=True))


def utcnow() -> datetime:
    """The current time, aware, in UTC."""
    return datetime.now(UTC)
