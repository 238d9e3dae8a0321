"""The dashboard (port 3848): static pages over the browser client, and the client module itself."""

from app.dashboard.app import STATIC_DIR, DashboardSurface

__all__ = ["STATIC_DIR", "DashboardSurface"]
