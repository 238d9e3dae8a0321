"""Path reservations: conflicts (exclusive, shared, globs), check, renew, release, expiry."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.domain.paths import normalise, overlaps
from app.server import Service
from tests.conftest import ClientFactory, ServiceFactory
from tests.databases import BACKENDS, api, data_settings, fresh_database


@pytest.fixture(params=BACKENDS)
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    async with fresh_database(request, tmp_path) as url:
        yield url


@pytest.mark.parametrize(
    ("a", "b", "overlap"),
    [
        ("README.md", "README.md", True),
        ("src/api", "src/api/routes.py", True),  # a directory holds its files
        ("src/api/", "src/api/x/y.py", True),
        ("src/ap", "src/api", False),
        ("src/api/**", "src/api/v1/users.py", True),
        ("src/api/**", "src/web/app.py", False),
        ("src/*.py", "src/main.py", True),
        ("src/*.py", "src/sub/main.py", False),
        ("*.md", "README.md", True),
        ("*.md", "src/x.py", False),
        ("**/*.md", "docs", True),  # docs/a.md could be both
        ("src/api/**", "src/**", True),  # two globs on one branch
        ("src/api/**", "docs/**", False),
        ("src/a?.py", "src/ab.py", True),
        ("src/[ab].py", "src/c.py", False),
        ("./src//api/", "src/api", True),
    ],
)
def test_overlap(a: str, b: str, overlap: bool) -> None:
    assert overlaps(normalise(a), normalise(b)) is overlap
    assert overlaps(normalise(b), normalise(a)) is overlap


def test_paths_may_not_climb_out() -> None:
    with pytest.raises(ValueError):
        normalise("src/../../etc/passwd")


async def reserve(http: httpx.AsyncClient, agent: str, *paths: str, **extra: Any) -> httpx.Response:
    return await http.post(
        "/api/reservations", json={"agent_id": agent, "paths": list(paths), **extra}
    )


async def test_conflicts_and_their_holders(
    database_url: str, start_service: ServiceFactory, ws_client: ClientFactory
) -> None:
    service = await start_service(**data_settings(database_url))
    watcher = await ws_client(service)
    await watcher.subscribe("global")
    async with api(service) as http:
        mine = await reserve(http, "a", "src/api/**", "README.md", reason="refactor")
        assert mine.status_code == 201, mine.text
        held = mine.json()
        assert held["paths"] == ["README.md", "src/api/**"] and held["active"] is True
        created = await watcher.next_event("reservation.created")
        assert created["data"]["reservation_id"] == held["id"] and created["data"]["exclusive"]

        clash = await reserve(http, "b", "src/api/users.py")
        assert clash.status_code == 409
        body = clash.json()
        assert body["code"] == "RESERVATION_CONFLICT"
        assert [c["id"] for c in body["conflicts"]] == [held["id"]]
        assert body["conflicts"][0]["agent_id"] == "a"
        # Nothing was reserved for b.
        assert (await http.get("/api/reservations", params={"agent_id": "b"})).json()["items"] == []

        assert (await reserve(http, "b", "src/web/**")).status_code == 201  # no overlap
        assert (await reserve(http, "a", "src/api/x.py")).status_code == 201  # own: fine
        # Shared reservations coexist; an exclusive one over them conflicts.
        assert (await reserve(http, "c", "docs/**", exclusive=False)).status_code == 201
        assert (await reserve(http, "d", "docs/a.md", exclusive=False)).status_code == 201
        assert (await reserve(http, "e", "docs")).status_code == 409

        check = await http.get("/api/reservations", params={"path": "src/api/v2/**"})
        assert {r["agent_id"] for r in check.json()["items"]} == {"a"}
        bad = await http.get("/api/reservations", params={"path": "../x"})
        assert bad.status_code == 422 and bad.json()["code"] == "INVALID_PATH"

        released = await http.delete(f"/api/reservations/{held['id']}")
        assert released.status_code == 204
        assert (await watcher.next_event("reservation.released"))["data"]["reservation_id"] == (
            held["id"]
        )
        again = await http.post(f"/api/reservations/{held['id']}/renew", json={})
        assert again.status_code == 409 and again.json()["code"] == "RESERVATION_ENDED"
        assert (await reserve(http, "b", "src/api/users.py")).status_code == 201


async def test_expiry_and_renewal(database_url: str, start_service: ServiceFactory) -> None:
    service: Service = await start_service(**data_settings(database_url, lease_sweep_interval=0.2))
    async with api(service) as http:
        short = (await reserve(http, "a", "a.txt", ttl_seconds=1)).json()
        kept = (await reserve(http, "a", "b.txt", ttl_seconds=1)).json()
        renewed = await http.post(f"/api/reservations/{kept['id']}/renew", json={"ttl_seconds": 30})
        assert renewed.status_code == 200 and renewed.json()["expires_at"] > kept["expires_at"]
        await asyncio.sleep(1.6)
        listed = (await http.get("/api/reservations", params={"active": "false"})).json()["items"]
        state = {r["id"]: r for r in listed}
        assert state[short["id"]]["active"] is False and state[short["id"]]["expired_at"]
        assert state[kept["id"]]["active"] is True
        assert (await reserve(http, "b", "a.txt")).status_code == 201
        assert (await reserve(http, "b", "b.txt")).status_code == 409
