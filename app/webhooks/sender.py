"""One webhook attempt over HTTP: resolved once, connected to the checked address, bounded.

    target = guard.target(url)          # resolve the host once, refuse what is not public
    POST http(s)://<that address>:<port>/path   Host: <the URL's host>, TLS SNI and
                                                certificate check for the URL's host
    read at most the first 1 KiB of the answer, no redirect followed, WEBHOOK_TIMEOUT for all
    (a name with several addresses: each checked one in turn until a connection is made)

Connecting to the address that was checked (rather than letting the HTTP client resolve the
name again) is what makes the check hold: a DNS answer changed in between cannot move the
connection. httpx keeps the `Host` header we give and uses the `sni_hostname` request
extension for the TLS handshake and the certificate's name check. Each URL host has a client
of its own, so a kept-alive TLS connection verified for one name never carries another's
requests (two names can share an address). Proxies from the environment are ignored
(`trust_env=False`): a proxy would resolve the name itself.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import httpx

from app import __version__
from app.webhooks.addresses import AddressGuard, UrlRefused

RESPONSE_BYTES = 1024  # what an attempt keeps of the answer
MAX_CLIENTS = 64  # URL hosts with a client (and its kept-alive connections) at once
USER_AGENT = f"context-manager-webhooks/{__version__}"


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one attempt got: a status (or none), how long it took, the start of the answer."""

    status_code: int | None
    latency_ms: float
    response: str | None = None
    error: str | None = None
    retry_after: float | None = None  # seconds, from a 429/503's Retry-After

    @property
    def succeeded(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300

    @property
    def gone(self) -> bool:
        """410: the receiver wants no more (the endpoint is disabled)."""
        return self.status_code == 410


def retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds a Retry-After header asks for (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def clean(text: str) -> str:
    """Text fit for any database column: PostgreSQL refuses NUL characters."""
    return text.replace("\x00", "\ufffd")


class Sender:
    """POSTs webhook bodies; one instance per node, closed on stop."""

    def __init__(
        self,
        guard: AddressGuard,
        timeout: float,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.guard = guard
        self.timeout = timeout
        self._verify: ssl.SSLContext | bool = ssl_context if ssl_context is not None else True
        self._clients: OrderedDict[tuple[str, str, int], httpx.AsyncClient] = OrderedDict()

    async def close(self) -> None:
        clients = list(self._clients.values())
        self._clients.clear()
        for client in clients:
            await client.aclose()

    async def _client(self, key: tuple[str, str, int]) -> httpx.AsyncClient:
        client = self._clients.get(key)
        if client is not None:
            self._clients.move_to_end(key)
            return client
        client = httpx.AsyncClient(
            follow_redirects=False,
            trust_env=False,
            verify=self._verify,
            timeout=httpx.Timeout(self.timeout),
            limits=httpx.Limits(max_connections=4, max_keepalive_connections=2),
        )
        self._clients[key] = client
        while len(self._clients) > MAX_CLIENTS:
            _, oldest = self._clients.popitem(last=False)
            await oldest.aclose()
        return client

    async def post(self, url: str, headers: dict[str, str], body: bytes) -> Outcome:
        """One attempt: never raises for what the network or the receiver does."""
        started = time.perf_counter()

        def took() -> float:
            return round((time.perf_counter() - started) * 1000, 3)

        try:
            async with asyncio.timeout(self.timeout):
                return await self._post(url, headers, body, took)
        except UrlRefused as exc:
            return Outcome(None, took(), error=f"refused: {exc.message}")
        except TimeoutError:
            return Outcome(None, took(), error=f"timed out after {self.timeout:g} s")
        except httpx.HTTPError as exc:
            detail = str(exc) or type(exc).__name__
            return Outcome(None, took(), error=clean(f"{type(exc).__name__}: {detail}"))
        except OSError as exc:
            return Outcome(None, took(), error=clean(f"{type(exc).__name__}: {exc}"))

    async def _post(
        self, url: str, headers: dict[str, str], body: bytes, took: Callable[[], float]
    ) -> Outcome:
        target = await self.guard.target(url)
        parsed = httpx.URL(url)
        request_headers = {
            **headers,
            "Host": parsed.netloc.decode("ascii"),
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            "Accept-Encoding": "identity",
        }
        extensions: dict[str, str] = {}
        if target.scheme == "https" and target.host not in target.addresses:
            extensions["sni_hostname"] = target.host
        client = await self._client((target.scheme, target.host, target.port))
        # The checked addresses in turn (a name with an unreachable IPv6 address and a
        # reachable IPv4 one still gets its webhooks); never one that was not checked.
        for index, address in enumerate(target.addresses):
            request = client.build_request(
                "POST",
                parsed.copy_with(host=address),
                headers=request_headers,
                content=body,
                extensions=extensions,
            )
            try:
                response = await client.send(request, stream=True)
                break
            except httpx.ConnectError:
                if index == len(target.addresses) - 1:
                    raise
        try:
            head = b""
            async for chunk in response.aiter_bytes():
                head += chunk
                if len(head) >= RESPONSE_BYTES:
                    break
        finally:
            await response.aclose()
        status = response.status_code
        text = clean(head[:RESPONSE_BYTES].decode("utf-8", errors="replace")) or None
        error = None
        if 300 <= status < 400:
            location = clean(response.headers.get("location", "")[:500])
            error = f"redirect not followed (Location: {location or '—'})"
        elif not 200 <= status < 300:
            error = f"HTTP {status}"
        wait = retry_after(response.headers.get("retry-after")) if status in (429, 503) else None
        return Outcome(status, took(), text, error, wait)
