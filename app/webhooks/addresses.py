"""Where a webhook may go: http(s) URLs whose host resolves only to public addresses.

SSRF: whoever registers a URL makes this server send requests to it. The guard runs twice —
at registration (a clear 422) and before every attempt, where the host is resolved once and
the connection goes to the address that was checked (app/webhooks/sender.py), so a DNS answer
that changes between the check and the connection (rebinding) cannot point it inside.

Refused (unless WEBHOOK_ALLOW_PRIVATE=true): every address that is not globally reachable —
loopback, private (10/8, 172.16/12, 192.168/16, fc00::/7), link-local (169.254/16, which holds
the cloud metadata service 169.254.169.254, and fe80::/10), shared (100.64/10, where some clouds
put theirs), unspecified, reserved, documentation and benchmarking ranges, multicast — and
IPv6 forms that embed such an IPv4 address (::ffff:10.0.0.1, 6to4, Teredo). A host that
resolves to several addresses is refused if any of them is.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

MAX_URL_LENGTH = 2048
RESOLVE_TIMEOUT = 5.0
REFUSED = "WEBHOOK_URL_REFUSED"
UNRESOLVABLE = "WEBHOOK_URL_UNRESOLVABLE"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class UrlRefused(Exception):
    """A webhook URL (or what its host resolves to) that the server will not call."""

    def __init__(self, message: str, code: str = REFUSED) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


@dataclass(frozen=True, slots=True)
class Target:
    """Where one attempt connects: the URL's host and port, and the addresses checked."""

    scheme: str
    host: str  # as in the URL (a name, or an IP without brackets)
    port: int
    addresses: tuple[str, ...]  # the resolved IPs, in the resolver's order of preference


def why_refused(address: IPAddress) -> str | None:
    """What kind of address `address` is, when it is no place for a webhook (None: public)."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is None and address.teredo is not None:
            embedded = address.teredo[1]
        if embedded is not None:
            kind = why_refused(embedded)
            if kind is not None:
                return f"{kind} inside an IPv6 one ({embedded})"
    for test, kind in (
        (address.is_loopback, "a loopback address"),
        (address.is_link_local, "a link-local address (cloud metadata lives there)"),
        (address.is_unspecified, "an unspecified address"),
        (address.is_private, "a private address"),
        (address.is_multicast, "a multicast address"),
        (address.is_reserved, "a reserved address"),
        (not address.is_global, "not a public address"),
    ):
        if test:
            return kind
    return None


ADVICE = "webhooks go to public addresses only (WEBHOOK_ALLOW_PRIVATE=true allows others)"


def parse_url(url: str) -> SplitResult:
    """The URL's parts, or UrlRefused saying what is wrong with it."""
    if len(url) > MAX_URL_LENGTH:
        raise UrlRefused(f"URL longer than {MAX_URL_LENGTH} characters")
    if any(c.isspace() or ord(c) < 32 for c in url):
        raise UrlRefused("URL must not contain spaces or control characters")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise UrlRefused(f"URL scheme must be http or https, not {parts.scheme!r}")
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise UrlRefused("URL has an invalid port") from None
    if not parts.hostname:
        raise UrlRefused("URL has no host")
    if parts.fragment:
        raise UrlRefused("URL must not have a #fragment (it is never sent)")
    return parts


def _is_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class AddressGuard:
    """Resolves a webhook URL's host and refuses what is not public (unless allowed)."""

    def __init__(self, allow_private: bool, resolve_timeout: float = RESOLVE_TIMEOUT) -> None:
        self.allow_private = allow_private
        self.resolve_timeout = resolve_timeout

    async def target(self, url: str) -> Target:
        """The checked address one attempt connects to; UrlRefused when there is none."""
        parts = parse_url(url)
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "https" else 80)
        addresses = await self._resolve(host, port)
        literal = len(addresses) == 1 and _is_literal(host)
        if not self.allow_private:
            for address in addresses:
                kind = why_refused(address)
                if kind is None:
                    continue
                if literal:
                    raise UrlRefused(f"{host} is {kind}: {ADVICE}")
                raise UrlRefused(f"{host} resolves to {address}, {kind}: {ADVICE}")
        return Target(parts.scheme, host, port, tuple(str(a) for a in addresses))

    async def _resolve(self, host: str, port: int) -> list[IPAddress]:
        try:
            literal = ipaddress.ip_address(host)
        except ValueError:
            pass
        else:
            return [literal]
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.resolve_timeout):
                infos = await loop.getaddrinfo(
                    host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
                )
        except TimeoutError:
            raise UrlRefused(
                f"{host} did not resolve within {self.resolve_timeout:g} s", UNRESOLVABLE
            ) from None
        except (OSError, UnicodeError) as exc:
            raise UrlRefused(f"{host} does not resolve ({exc})", UNRESOLVABLE) from None
        addresses: list[IPAddress] = []
        for family, _type, _proto, _name, sockaddr in infos:
            if family not in (socket.AF_INET, socket.AF_INET6):
                continue
            # An IPv6 scope id ("fe80::1%eth0") is not part of the address.
            address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
            if address not in addresses:
                addresses.append(address)
        if not addresses:
            raise UrlRefused(f"{host} has no IPv4 or IPv6 address", UNRESOLVABLE)
        return addresses
