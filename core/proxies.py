"""Who may tell us a client's address: the proxies in front of Wattle (``TRUSTED_PROXIES``).

Behind a load balancer every connection comes from the balancer; the client's own address is in the
``X-Forwarded-For`` header each proxy appends its peer to. The client can write that header too, so only the
entries added by proxies we trust mean anything. ``TRUSTED_PROXIES`` names them, as a count of hops or as
networks; unset, the header is ignored and the connection's peer is the client.

One rule for every reader of a client address: the console (``portal.middleware.ClientAddressMiddleware``
rewrites ``REMOTE_ADDR`` once, so allauth's login throttle, DRF's throttles and the audit trail see the same
address) and the internal-caller rule of ``/metrics`` and ``/readyz``. uvicorn's own forwarded-header handling
is turned off (``UVICORN_ARGS``): by default it trusts 127.0.0.1 and ``FORWARDED_ALLOW_IPS``, a second rule that
would rewrite the address before ours runs.
"""

from __future__ import annotations

import functools
import hmac
import ipaddress
from dataclasses import dataclass

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# Every uvicorn command line Wattle starts (devserver, bench, the documented production command) carries these.
UVICORN_ARGS = ("--no-proxy-headers",)


def parse_address(value: str | None) -> Address | None:
    """An address as a socket or a proxy writes it: bare, ``a.b.c.d:port``, ``[v6]`` or ``[v6]:port``."""
    if not value:
        return None
    value = value.strip()
    if value.startswith("["):
        end = value.find("]")
        if end == -1:
            return None
        value = value[1:end]
    elif value.count(":") == 1:
        value = value.partition(":")[0]
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return None
    # An IPv4 client on a dual-stack socket shows as ::ffff:a.b.c.d; networks are written in IPv4.
    return getattr(address, "ipv4_mapped", None) or address


@dataclass(frozen=True)
class TrustedProxies:
    """``hops``: that many proxies always stand in front (the client is the ``hops``-th entry from the right).
    ``networks``: a peer in one of them is a proxy; walk the header from the right past every trusted address.
    Neither: there is no proxy we trust."""

    hops: int = 0
    networks: tuple[Network, ...] = ()

    @property
    def enabled(self) -> bool:
        return bool(self.hops or self.networks)

    def _trusted(self, address: Address) -> bool:
        return any(address in network for network in self.networks)

    def resolve(self, peer: str | None, forwarded_for: str | None) -> tuple[Address | None, bool]:
        """The client's address and whether it is vouched for. Not vouched: forwarding headers came that no
        trusted proxy wrote (or fewer entries than the hops we trust), so the request passed a proxy we don't
        know; the address is then the peer's, which no header can change."""
        peer_address = parse_address(peer)
        entries = [e for e in (forwarded_for or "").split(",") if e.strip()]
        if self.hops:
            if len(entries) < self.hops:
                return peer_address, not entries
            client = parse_address(entries[-self.hops])
            return (client, True) if client is not None else (peer_address, False)
        if not self.networks or peer_address is None or not self._trusted(peer_address):
            return peer_address, not entries
        current = peer_address
        for entry in reversed(entries):
            address = parse_address(entry)
            if address is None:
                return current, False  # a trusted proxy wrote something that is no address
            if not self._trusted(address):
                return address, True
            current = address
        return current, True  # trusted all the way: an internal caller behind our own proxies


@functools.lru_cache(maxsize=8)
def parse_trusted_proxies(raw: str | None) -> TrustedProxies:
    """``""``: none. ``"2"``: two hops. ``"10.0.0.0/8, 192.168.1.7"``: networks (a bare address is one host).
    Raises ValueError on anything else, for the settings to fail loudly."""
    raw = (raw or "").strip()
    if not raw:
        return TrustedProxies()
    if raw.isdigit():
        return TrustedProxies(hops=int(raw))
    networks = []
    for item in (i.strip() for i in raw.split(",")):
        if not item:
            continue
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ValueError(
                f"TRUSTED_PROXIES item {item!r} is neither a hop count nor an address or network (CIDR)"
            ) from None
    return TrustedProxies(networks=tuple(networks))


def request_client_ip(request) -> str | None:
    """The client address of a console request, for the audit trail and the throttles: ``REMOTE_ADDR`` as
    ``ClientAddressMiddleware`` resolved it (a request that never passed it keeps the peer, never a header)."""
    if request is None:
        return None
    return request.META.get("REMOTE_ADDR") or None


@dataclass(frozen=True)
class InternalCallers:
    """Who may read operational detail (``/metrics``, the checks of ``/readyz``): the holder of the token, or a
    caller whose address, resolved through the trusted proxies, is in an internal network."""

    token: str
    networks: tuple[Network, ...]
    proxies: TrustedProxies

    def allowed(self, *, peer: str | None, forwarded_for: str | None, forwarded: bool,
                authorization: bytes) -> bool:
        if self.token and hmac.compare_digest(authorization, b"Bearer " + self.token.encode()):
            return True
        if forwarded:
            return False  # RFC 7239 ``Forwarded``: we don't read it, so we can't vouch for the address
        address, vouched = self.proxies.resolve(peer, forwarded_for)
        return vouched and address is not None and any(address in network for network in self.networks)


@functools.lru_cache(maxsize=8)
def internal_callers_for(token: str, networks: tuple[str, ...], trusted_proxies: str) -> InternalCallers:
    return InternalCallers(
        token=token,
        networks=tuple(ipaddress.ip_network(n, strict=False) for n in networks),
        proxies=parse_trusted_proxies(trusted_proxies),
    )
