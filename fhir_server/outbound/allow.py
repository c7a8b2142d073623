"""Where the server may send (FHIR_OUTBOUND_ALLOW): a Subscription's endpoint is chosen
by a client, so without a limit it could make the server reach internal addresses (the
cloud metadata service, the database, an admin port) on the client's behalf (SSRF).

Entries, comma-separated:
- ``public``: any address that is globally routable (not loopback, private, link-local,
  shared, multicast or reserved);
- a host name (``hooks.example.org``) or every name under a domain (``*.example.org``),
  optionally with a port (``hooks.example.org:8443``): allowed whatever it resolves to,
  since the operator named it;
- an IP address or network (``10.1.2.3``, ``10.1.2.0/24``), optionally with a port for a
  single address (``127.0.0.1:9000``).

A URL is allowed when its name is listed, or when every address it resolves to is. It
is checked when the Subscription is written and again before each delivery (a name may
resolve elsewhere later); redirects are never followed.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class Refused(Exception):
    """The destination is not allowed (the text says why)."""


@dataclass(frozen=True, slots=True)
class _Entry:
    name: str | None = None  # a host name, or ".example.org" for *.example.org
    network: Network | None = None
    port: int | None = None

    def names(self, host: str, port: int) -> bool:
        if self.name is None or (self.port is not None and self.port != port):
            return False
        if self.name.startswith("."):
            return host.endswith(self.name)
        return host == self.name

    def holds(self, address: Address, port: int) -> bool:
        if self.network is None or (self.port is not None and self.port != port):
            return False
        return address in self.network


def _entry(text: str) -> _Entry:
    host, port = text, None
    if text.startswith("["):  # [v6]:port
        inner, _, rest = text[1:].partition("]")
        host, port = inner, int(rest[1:]) if rest.startswith(":") else None
    elif text.count(":") == 1:
        host, _, p = text.partition(":")
        port = int(p)
    try:
        return _Entry(network=ipaddress.ip_network(host, strict=False), port=port)
    except ValueError:
        pass
    if host.startswith("*."):
        return _Entry(name=host[1:].lower(), port=port)
    return _Entry(name=host.lower().rstrip("."), port=port)


def _public(address: Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not address.is_multicast


class OutboundAllowList:
    """FHIR_OUTBOUND_ALLOW, parsed."""

    def __init__(self, spec: str) -> None:
        items = [i.strip() for i in spec.split(",") if i.strip()]
        self.public = "public" in items
        try:
            self.entries = [_entry(i) for i in items if i != "public"]
        except ValueError as exc:
            raise ValueError(f"FHIR_OUTBOUND_ALLOW: {exc}") from None

    def check(self, url: str) -> None:
        """Raise Refused unless ``url`` (http or https) may be sent to."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise Refused(f"{url!r} is not an http(s) URL")
        host = parts.hostname.lower().rstrip(".")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise Refused(f"{url!r} has an invalid port") from None
        if any(e.names(host, port) for e in self.entries):
            return
        for address in self._addresses(host, port):
            if not (self.public and _public(address)) and not any(
                e.holds(address, port) for e in self.entries
            ):
                raise Refused(
                    f"{host} ({address}) is not an allowed destination (FHIR_OUTBOUND_ALLOW)"
                )

    @staticmethod
    def _addresses(host: str, port: int) -> list[Address]:
        try:
            return [ipaddress.ip_address(host)]
        except ValueError:
            pass
        try:
            infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
        except OSError as exc:
            raise Refused(f"{host} cannot be resolved: {exc}") from None
        found = [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]
        if not found:
            raise Refused(f"{host} cannot be resolved")
        return found
