"""The /api routers may be included in any order: no path and method is served by two of them.

app/main.py orders `API_ROUTERS` by how often agents call them, to route the hot writes
sooner. That is safe only while every request one router answers is answered by no other;
otherwise reordering would silently change which handler runs. No server is needed: this
asks Starlette's own matcher, the one FastAPI routes with.
"""

from __future__ import annotations

import pkgutil
import re
from types import ModuleType

import pytest
from starlette.routing import BaseRoute, Match, Mount, Route

from app.api.routes import health, index
from app.core.config import Settings
from app.main import API_ROUTERS, create_app

ROUTERS: tuple[ModuleType, ...] = (health, index, *API_ROUTERS)


def concrete(path: str) -> str:
    """A request path for a route's template: each `{param}` filled with a sample value."""
    return re.sub(r"\{[^}]+\}", "sample-1", path)


def declared() -> list[tuple[ModuleType, Route, str]]:
    return [
        (module, route, method)
        for module in ROUTERS
        for route in module.router.routes
        if isinstance(route, Route)
        for method in sorted(route.methods or ())
    ]


def full_match(routes: list[BaseRoute], path: str, method: str) -> bool:
    scope = {"type": "http", "path": path, "method": method, "root_path": ""}
    return any(route.matches(scope)[0] is Match.FULL for route in routes)


def test_every_api_module_is_included() -> None:
    """A router module left out of API_ROUTERS would vanish from the API without an error."""
    import app.api.routes as package

    shipped = {f"{package.__name__}.{info.name}" for info in pkgutil.iter_modules(package.__path__)}
    included = [module.__name__ for module in ROUTERS]
    assert sorted(included) == sorted(shipped)
    assert len(included) == len(set(included))


@pytest.mark.parametrize(
    ("module", "route", "method"),
    [pytest.param(*row, id=f"{row[2]} {row[1].path}") for row in declared()],
)
def test_no_other_router_serves_the_route(module: ModuleType, route: Route, method: str) -> None:
    path = concrete(route.path)
    assert full_match([route], path, method), "the sample path must reach its own route"
    others = [
        other.__name__
        for other in ROUTERS
        if other is not module and full_match(list(other.router.routes), path, method)
    ]
    assert others == [], f"{method} {path} is also served by {others}"


def test_the_app_own_routes_serve_none_of_them() -> None:
    """/openapi.json, /docs and /mcp sit beside the routers in the app: they must not shadow
    or be shadowed by an /api route either."""
    app = create_app(Settings())
    own = [route for route in app.router.routes if isinstance(route, Route | Mount)]
    assert own, "the app's own routes were not found"
    for _module, route, method in declared():
        path = concrete(route.path)
        assert not full_match(own, path, method), f"{method} {path}"
