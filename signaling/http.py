"""HTTP-level helpers shared by the socket and the views."""
import ipaddress


def _valid_ip(text):
    try:
        ip = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    # A dual-stack socket (daphne on "::") sees an IPv4 client as
    # ::ffff:a.b.c.d: it is that IPv4 client, and is recorded as one.
    if ip.version == 6 and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return str(ip)


def client_group(address, options):
    """What the server counts one client by: an IPv4 address, or the network of an IPv6 one.

    A single IPv6 host usually has a whole /64 to itself and may take any
    address of it, so counting by address would give it endless fresh
    budgets. Rate limits, the per-address socket cap, bans and the admin's
    login throttling all count by this, an IPv6 client as its network of
    PEERJS_IPV6_PREFIX bits, written as the network's first address
    (``2001:db8:1:2::`` for /64) so that it fits wherever an address goes.
    None stays None.
    """
    if not address:
        return address
    ip = ipaddress.ip_address(address)
    if ip.version == 4:
        return address
    if ip.ipv4_mapped:
        return str(ip.ipv4_mapped)
    host_bits = 128 - options.ipv6_prefix
    return str(ipaddress.IPv6Address(int(ip) >> host_bits << host_bits))


def header(scope, name):
    """The first value of header ``name`` (lowercase bytes) in an ASGI scope, as text; None if absent."""
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


def client_address(scope, options):
    """The client's IP address for an ASGI scope, by ``options``' proxy rules.

    The connection's own address, unless PEERJS_PROXIED is on and the
    connection comes from a trusted proxy (PEERJS_TRUSTED_PROXIES): then the
    last X-Forwarded-For entry, the one our proxy added; earlier entries come
    from the client and can be forged. A client may also send header lines
    of its own, and a proxy that appends a line instead of extending one puts
    its entry in the last line: so the last line's last entry counts.
    """
    if from_trusted_proxy(scope, options):
        forwarded = [value for key, value in scope.get("headers", ()) if key == b"x-forwarded-for"]
        if forwarded:
            return _valid_ip(forwarded[-1].decode("latin-1").split(",")[-1])
    return _connection_address(scope)


def from_trusted_proxy(scope, options):
    """Whether an ASGI scope's connection comes from our proxy (PEERJS_PROXIED, PEERJS_TRUSTED_PROXIES).

    Only then are the headers the proxy sets (X-Forwarded-For, the socket's
    X-PeerJS-Retry-Elsewhere) its own and not a client's.
    """
    return options.proxy_trusted(_connection_address(scope))


def _connection_address(scope):
    client = scope.get("client")
    return _valid_ip(client[0]) if client else None


def request_address(request, options):
    """The client's IP address for a Django request, by :func:`client_address`'s rule.

    Under an ASGI server the request carries its scope; a WSGI request
    (Django's test client) gets one built from its META.
    """
    scope = getattr(request, "scope", None)
    if scope is None:
        remote = request.META.get("REMOTE_ADDR")
        forwarded = request.META.get("HTTP_X_FORWARDED_FOR")
        scope = {
            "client": (remote, 0) if remote else None,
            "headers": [(b"x-forwarded-for", forwarded.encode("latin-1"))] if forwarded else [],
        }
    return client_address(scope, options)
