"""Container HEALTHCHECK: exit 0 when /readyz answers 200 on a port this container serves.

One image runs every role (api, ws, dashboard); each listens on its own port, so the check
tries them all. Ready means: start-up finished, database and broker reachable, not draining.
"""

from __future__ import annotations

import os
import sys
import urllib.request

PORTS = (("WS_PORT", "3849"), ("API_PORT", "3847"), ("DASHBOARD_PORT", "3848"))


def ready(port: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


if __name__ == "__main__":
    sys.exit(0 if any(ready(os.environ.get(name, default)) for name, default in PORTS) else 1)
