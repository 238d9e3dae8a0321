"""Settings: normalisation of what users type, and the generated configuration reference."""

from __future__ import annotations

from pathlib import Path

from app.core.config import Settings, settings_table

ROOT = Path(__file__).resolve().parent.parent


def test_database_urls_are_normalised_to_async_drivers() -> None:
    for typed, expected in [
        ("postgres://u@h/db", "postgresql+asyncpg://u@h/db"),
        ("postgresql://u@h/db", "postgresql+asyncpg://u@h/db"),
        ("sqlite:///x.db", "sqlite+aiosqlite:///x.db"),
        ("sqlite+aiosqlite:///x.db", "sqlite+aiosqlite:///x.db"),
    ]:
        assert Settings(_env_file=None, database_url=typed).database_url == expected  # type: ignore[call-arg]


def test_broker_follows_redis_url() -> None:
    assert Settings(_env_file=None).broker_kind == "memory"  # type: ignore[call-arg]
    with_redis = Settings(_env_file=None, redis_url="redis://127.0.0.1:6379/0")  # type: ignore[call-arg]
    assert with_redis.broker_kind == "redis"


def test_configuration_reference_matches_the_code() -> None:
    documented = (ROOT / "docs" / "configuration.md").read_text()
    assert documented == settings_table(), "run: python -m app.core.config > docs/configuration.md"


def test_readme_names_only_real_settings() -> None:
    readme = (ROOT / "README.md").read_text()
    table = readme.split("## Configuration", 1)[1].split("## ", 1)[0]
    names = {
        cell.strip().strip("`")
        for row in table.splitlines()
        if row.startswith("| `")
        for cell in row.split("|")[1].split("/")
    }
    known = {name.upper() for name in Settings.model_fields}
    assert names and names <= known, names - known
