"""Fetching an ``audio_url`` without letting callers reach what the server can but they should not.

Only http and https; the host name is resolved once, every address it gives is checked (no
loopback, private, link-local, shared, multicast or reserved address unless ``[ai]
url_allow_networks`` lists its network) and the connection goes to a checked address, so a name
that resolves differently the second time cannot slip through. Redirects are followed by hand, each
target checked the same way. The body is capped in size and the whole fetch in time.

The same checks guard the server's other requests to addresses users give (webhook URLs): their
``what`` names the setting or field in the messages."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from yarl import URL

MAX_REDIRECTS = 3
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class UrlRefused(Exception):
    """The URL may not be fetched, or fetching it failed; the message is safe to show."""


def parse_networks(values: list[str]) -> list[Network]:
    return [ipaddress.ip_network(value, strict=False) for value in values]


def address_refused(address: str, allowed: list[Network]) -> str | None:
    """Why ``address`` may not be reached, or None when it may."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if any(ip in network for network in allowed):
        return None
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local address"
    if ip.is_multicast or ip.is_unspecified or ip.is_reserved or not ip.is_global:
        return "a private or reserved address"
    return None


def check_url(url: str, allowed: list[Network], what: str = "audio_url") -> URL:
    """The parsed URL, if its form is acceptable and a literal address in it may be reached."""
    try:
        parsed = URL(url)
        host = parsed.host  # decoded here: an IDNA label that does not decode is a ValueError
    except (ValueError, TypeError):
        raise UrlRefused(f"{what} is not a valid URL") from None
    if parsed.scheme not in {"http", "https"}:
        raise UrlRefused(f"{what} must be an http or https URL")
    if not host:
        raise UrlRefused(f"{what} has no host")
    if parsed.user or parsed.password:
        raise UrlRefused(f"{what} must not carry credentials")
    try:
        reason = address_refused(host, allowed)
    except ValueError:
        return parsed  # a name: checked when resolved
    if reason:
        raise UrlRefused(f"{what} points to {reason}, which this server does not connect to")
    return parsed


async def resolve_checked(host: str, port: int, allowed: list[Network], what: str = "audio_url") -> list[ResolveResult]:
    try:
        found = await DefaultResolver().resolve(host, port, socket.AF_UNSPEC)
    except (OSError, UnicodeError):  # UnicodeError: a name IDNA cannot encode (an empty or 64+ label)
        raise UrlRefused(f"the host {host} of {what} cannot be resolved") from None
    for result in found:
        reason = address_refused(result["host"], allowed)
        if reason:
            raise UrlRefused(f"{what}'s host {host} resolves to {reason}, which this server does not connect to")
    return found


class CheckedResolver(AbstractResolver):
    """aiohttp connects to what this returns: the addresses it checked, resolved once."""

    def __init__(self, allowed: list[Network], what: str = "audio_url") -> None:
        self.allowed = allowed
        self.what = what
        self.refused: UrlRefused | None = None

    async def resolve(self, host: str, port: int = 0, family: int = socket.AF_INET) -> list[ResolveResult]:
        try:
            return await resolve_checked(host, port, self.allowed, self.what)
        except UrlRefused as exc:
            self.refused = exc
            raise OSError(str(exc)) from None

    async def close(self) -> None:
        return None


async def precheck(url: str, allowed: list[Network], timeout: float = 10.0, what: str = "audio_url") -> None:
    """The checks a fetch will make, ahead of queueing work that could only fail."""
    parsed = check_url(url, allowed, what)
    try:
        ipaddress.ip_address(parsed.host or "")
    except ValueError:
        try:
            await asyncio.wait_for(resolve_checked(parsed.host or "", parsed.port or 0, allowed, what), timeout)
        except TimeoutError:
            raise UrlRefused(f"the host {parsed.host} of {what} did not resolve within {timeout:g} s") from None


async def fetch(url: str, target: Path, *, max_bytes: int, timeout: float, allowed: list[Network]) -> int:
    """Write the body at ``url`` to ``target``; its size in bytes."""
    resolver = CheckedResolver(allowed)
    connector = aiohttp.TCPConnector(resolver=resolver, use_dns_cache=False, limit=1)
    client_timeout = aiohttp.ClientTimeout(total=timeout, sock_connect=min(timeout, 10))
    try:
        async with aiohttp.ClientSession(connector=connector, timeout=client_timeout, trust_env=False) as session:
            current = url
            for _ in range(MAX_REDIRECTS + 1):
                check_url(current, allowed)
                async with session.get(
                    current, allow_redirects=False, headers={"Accept": "audio/*, video/*"}
                ) as answer:
                    if answer.status in {301, 302, 303, 307, 308} and "Location" in answer.headers:
                        current = urljoin(current, answer.headers["Location"])
                        continue
                    if answer.status != 200:
                        raise UrlRefused(f"fetching audio_url answered HTTP {answer.status}")
                    return await _save(answer, target, max_bytes)
            raise UrlRefused(f"audio_url redirects more than {MAX_REDIRECTS} times")
    except UrlRefused:
        raise
    except TimeoutError:  # aiohttp's own timeouts are client errors too
        raise UrlRefused(f"fetching audio_url took longer than {timeout:g} s") from None
    except (aiohttp.ClientError, OSError) as exc:
        if resolver.refused is not None:
            raise resolver.refused from None
        raise UrlRefused(f"audio_url could not be fetched ({type(exc).__name__})") from None


async def _save(answer: Any, target: Path, max_bytes: int) -> int:
    declared = answer.content_length
    if declared is not None and declared > max_bytes:
        raise UrlRefused(f"audio_url's body is larger than the {max_bytes} bytes allowed")
    size = 0
    with target.open("wb") as out:
        async for chunk in answer.content.iter_chunked(1 << 16):
            size += len(chunk)
            if size > max_bytes:
                raise UrlRefused(f"audio_url's body is larger than the {max_bytes} bytes allowed")
            out.write(chunk)
    if size == 0:
        raise UrlRefused("audio_url's body is empty")
    return size
