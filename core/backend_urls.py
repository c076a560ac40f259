"""Where a backend URL may point: never at link-local or cloud metadata addresses.

Staff give the data plane backend URLs (console form, ``INFERENCE_BACKENDS``); the control plane and the data
plane then send requests, with the backend's API key, to whatever address that is. A link-local address is
the cloud's instance metadata service (169.254.169.254, ECS's 169.254.170.2, AWS's fd00:ec2::254 over IPv6),
which hands out the node's credentials: no backend is ever there.

A host is refused when it is such an address in any notation an HTTP client would connect to: what
``ipaddress`` reads (``[fd00:ec2::254]``, ``::ffff:169.254.169.254``) and the old inet_aton forms the C
resolver also takes (``2852039166``, ``0xa9fea9fe``, ``0251.0376.0251.0376``, ``169.254.43518``). With
``resolve=True`` a host name is also looked up once, and refused when any of its addresses is one; a name that
doesn't resolve (yet) is accepted. Looking up at save time can't stop a name that changes later (DNS
rebinding): the network must still block the metadata service from these processes (docs/operations.md).
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
import socket
from urllib.parse import unquote, urlsplit

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

REFUSED_NETWORKS = (
    ipaddress.ip_network("169.254.0.0/16"),  # IPv4 link-local: instance and task metadata, Amazon DNS, time sync
    ipaddress.ip_network("fe80::/10"),  # IPv6 link-local
    ipaddress.ip_network("fd00:ec2::254/128"),  # the EC2 instance metadata service over IPv6
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")  # the well-known NAT64 prefix: an IPv4 address in its last 32 bits
_NUMERIC_IPV4 = re.compile(r"[0-9a-fx.]+", re.IGNORECASE)


def literal_address(host: str) -> Address | None:
    """The address a host written as a literal stands for, or None for a name."""
    host = host.strip().rstrip(".")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if _NUMERIC_IPV4.fullmatch(host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def is_refused(address: Address) -> bool:
    """Link-local or metadata, also when an IPv6 address carries one of those IPv4 addresses inside it."""
    candidates = [address]
    if isinstance(address, ipaddress.IPv6Address):
        embedded = [address.ipv4_mapped, address.sixtofour]
        if address in _NAT64:
            embedded.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
        candidates += [a for a in embedded if a is not None]
    return any(a in network for a in candidates for network in REFUSED_NETWORKS)


def _host_forms(host: str) -> set[str]:
    """The host as written, percent-decoded, and IDNA-normalised (full-width digits are digits to a client)."""
    forms = {host, unquote(host)}
    for form in list(forms):
        with contextlib.suppress(UnicodeError):
            forms.add(form.encode("idna").decode("ascii"))
    return forms


def check_backend_url(url: str, *, resolve: bool) -> None:
    """Raise ValueError, with a message for the person who typed the URL, if it points where no backend may."""
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError as exc:
        raise ValueError(f"{url!r} is not a valid URL: {exc}") from None
    if not host:
        raise ValueError(f"{url!r} has no host.")
    forms = _host_forms(host)
    for form in forms:
        address = literal_address(form)
        if address is not None and is_refused(address):
            written = host if str(address) == host else f"{host} ({address})"
            raise ValueError(f"{written} is a link-local or cloud metadata address; a backend can't be there.")
    if not resolve or any(literal_address(form) is not None for form in forms):
        return
    try:
        infos = socket.getaddrinfo(host, port or (443 if parts.scheme == "https" else 80), type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return  # doesn't resolve (yet): nothing to judge
    for info in infos:
        address = literal_address(str(info[4][0]).partition("%")[0])
        if address is not None and is_refused(address):
            raise ValueError(
                f"{host} resolves to {address}, a link-local or cloud metadata address; a backend can't be there."
            )
