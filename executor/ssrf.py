"""The SSRF guard for every outgoing HTTP request a flow makes.

A flow author chooses the URL, so a request could aim at the machine Kwala runs
on, its private network or a cloud metadata service. The guard resolves the
host once, refuses every address that is not plainly public, and pins the
connection to the address it checked: the request goes to the IP, with the
Host header and TLS SNI set to the name, so a second DNS answer (rebinding)
is never consulted. Redirects are never followed, and no cookie is kept from
one request for the next (the connections are shared by every team).

``settings.KWALA_OUTBOUND_ALLOW`` (a list of networks) lets chosen ranges
through, e.g. loopback in development and tests; it is empty in production.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
from collections import OrderedDict
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import httpx
from django.conf import settings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Ranges that ipaddress does not already call private/reserved/etc. in every
# Python version, listed so the rule does not depend on the interpreter.
_BLOCKED_NETWORKS = [
    ipaddress.ip_network(net)
    for net in (
        "0.0.0.0/8",  # "this network"
        "100.64.0.0/10",  # carrier-grade NAT
        "169.254.0.0/16",  # link-local, cloud metadata (169.254.169.254)
        "192.0.0.0/24",  # IETF protocol assignments
        "198.18.0.0/15",  # benchmarking
        "64:ff9b::/96",  # NAT64: embeds an IPv4 address
        "64:ff9b:1::/48",
        "2002::/16",  # 6to4: embeds an IPv4 address
        "2001::/32",  # Teredo
        "fc00::/7",  # unique local
        "fe80::/10",  # link-local
        "fec0::/10",  # site-local (deprecated)
    )
]


class OutboundBlocked(Exception):
    """The URL may not be fetched; the message says why, without internals."""


@dataclass(frozen=True)
class Target:
    url: str  # the original URL
    scheme: str
    host: str  # the name as written (lower case, no brackets)
    port: int
    address: IPAddress  # the checked address the connection is pinned to

    @property
    def pinned_url(self) -> str:
        """The URL with the host replaced by the checked address."""
        parts = urlsplit(self.url)
        ip = f"[{self.address}]" if self.address.version == 6 else str(self.address)
        return urlunsplit((parts.scheme, f"{ip}:{self.port}", parts.path or "/", parts.query, ""))

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"


def _allowed_by_settings(address: IPAddress) -> bool:
    return any(address in net for net in settings.KWALA_OUTBOUND_ALLOW if net.version == address.version)


def why_blocked(address: IPAddress) -> str | None:
    """Why `address` may not be contacted, or None if it may."""
    if isinstance(address, ipaddress.IPv6Address):
        mapped = address.ipv4_mapped
        if mapped is not None:
            # ::ffff:127.0.0.1 reaches 127.0.0.1: judge the IPv4 address, and refuse
            # the mapped form unless that IPv4 address is itself allowed.
            return None if _allowed_by_settings(mapped) else "an IPv4-mapped IPv6 address"
    if _allowed_by_settings(address):
        return None
    checks = (
        ("is_unspecified", "an unspecified address"),
        ("is_loopback", "a loopback address"),
        ("is_link_local", "a link-local address"),
        ("is_multicast", "a multicast address"),
        ("is_private", "a private address"),
        ("is_reserved", "a reserved address"),
    )
    for attribute, reason in checks:
        if getattr(address, attribute):
            return reason
    for net in _BLOCKED_NETWORKS:
        if address.version == net.version and address in net:
            return "a special-purpose address"
    if not address.is_global:
        return "a non-public address"
    return None


def resolve(url: str) -> Target:
    """Check `url` and resolve its host once; raise OutboundBlocked if it may not be fetched.

    Every address the name resolves to must be allowed (a name that answers with
    one public and one private address is refused), and the first is used.
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise OutboundBlocked("the URL is not valid") from None
    if parts.scheme not in ("http", "https"):
        raise OutboundBlocked("only http and https URLs can be called")
    host = (parts.hostname or "").rstrip(".").lower()
    if not host:
        raise OutboundBlocked("the URL has no host")
    if parts.username or parts.password:
        raise OutboundBlocked("credentials in the URL are not allowed; use a header")
    port = port or (443 if parts.scheme == "https" else 80)
    try:
        # getaddrinfo also understands the odd IPv4 spellings (2130706433,
        # 0177.0.0.1, 127.1) exactly as a connecting client would.
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        raise OutboundBlocked(f"the host {host!r} could not be resolved") from None
    addresses: list[IPAddress] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        address = ipaddress.ip_address(sockaddr[0].split("%", 1)[0])
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise OutboundBlocked(f"the host {host!r} could not be resolved")
    for address in addresses:
        reason = why_blocked(address)
        if reason is not None:
            raise OutboundBlocked(f"{host} resolves to {reason}, which flows may not call")
    return Target(url=url, scheme=parts.scheme, host=host, port=port, address=addresses[0])


# What httpx.Client would add; the transport adds nothing of its own.
_DEFAULT_HEADERS = {"Accept": "*/*", "Accept-Encoding": "gzip, deflate"}


def build_request(target: Target, method: str, *, headers: dict[str, str], content: bytes | None,
                  timeout: float) -> httpx.Request:
    """A request to the pinned address that still presents the name (Host header, TLS SNI and certificate)."""
    extensions: dict = {"timeout": httpx.Timeout(timeout).as_dict()}
    if target.scheme == "https":
        # httpcore verifies the certificate against sni_hostname, not the IP.
        extensions["sni_hostname"] = target.host
    return httpx.Request(method, target.pinned_url, headers={**_DEFAULT_HEADERS, **headers, "Host": target.host_header},
                         content=content, extensions=extensions)


def send(target: Target, request: httpx.Request) -> httpx.Response:
    """Send the request on a kept-alive connection to its target; read the body from the response, then close it.

    Straight to the transport, not through an httpx.Client: a client follows
    redirects if asked, and keeps the cookies every response sets and sends them
    with the next request, and its connections are shared by every flow of every
    team that calls the same host. Errors are httpx's.
    """
    response = pooled_transport(target).handle_request(request)
    response.request = request
    return response


# Without TCP_NODELAY a request whose body goes out in a second write waits for the
# server's delayed ACK of the headers (up to 40 ms on Linux) on a kept-alive connection.
_SOCKET_OPTIONS = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]

POOLED_TRANSPORTS = 256
# Connections a pool opens to its target, all of them kept alive. A keep-alive limit below the
# connection limit must not be set: httpcore 1.0.9 then closes every idle connection whenever
# the pool holds more than that many (its surplus check counts all connections,
# encode/httpcore#1110), even one it has just handed to a waiting request, which fails with
# "[Errno 9] Bad file descriptor" or a reset. With 8 of 32, 16 threads calling one host opened
# ~500 connections for 800 requests and lost ~0.3 % of them; with 32 of 32, 16 connections and
# none lost (tests/executor/test_execution.py). A pool serves one origin, so the one other
# place httpcore closes an idle connection for another (at max_connections) never applies.
_CONNECTIONS = 32
_pooled: OrderedDict[tuple, httpx.HTTPTransport] = OrderedDict()
_pooled_lock = threading.Lock()


def pooled_transport(target: Target) -> httpx.HTTPTransport:
    """A keep-alive connection pool for one checked (scheme, name, port, address).

    Building one costs a TLS context (milliseconds of CPU), so each process keeps
    one per target. The key holds the name as well as the pinned address: a
    connection opened (and, for https, verified) for one name is never reused for
    another name that happens to share the address. Pools beyond the newest
    POOLED_TRANSPORTS are dropped (their idle connections close with them).
    """
    key = (target.scheme, target.host, target.port, target.address)
    with _pooled_lock:
        found = _pooled.get(key)
        if found is not None:
            _pooled.move_to_end(key)
            return found
        limits = httpx.Limits(max_connections=_CONNECTIONS, max_keepalive_connections=_CONNECTIONS,
                              keepalive_expiry=30)
        made = httpx.HTTPTransport(limits=limits, trust_env=False, socket_options=_SOCKET_OPTIONS)
        _pooled[key] = made
        while len(_pooled) > POOLED_TRANSPORTS:
            _pooled.popitem(last=False)
        return made
