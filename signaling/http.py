"""HTTP-level helpers shared by the socket and the views."""
import ipaddress


def _valid_ip(text):
    try:
        return str(ipaddress.ip_address(text.strip()))
    except ValueError:
        return None


def client_address(scope, proxied):
    """The client's IP address for an ASGI scope.

    Behind a proxy (``proxied``) the last X-Forwarded-For entry is the one our
    own proxy added; earlier entries come from the client and can be forged.
    """
    if proxied:
        for key, value in scope.get("headers", ()):
            if key == b"x-forwarded-for":
                return _valid_ip(value.decode("latin-1").split(",")[-1])
    client = scope.get("client")
    return _valid_ip(client[0]) if client else None
