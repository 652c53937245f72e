"""Id generators for ``GET {base}/{key}/id``; pick one with PEERJS_GENERATE_CLIENT_ID."""
import uuid


def uuid4_id():
    """The reference's default: a random UUID4 string (passes the client's id rule)."""
    return str(uuid.uuid4())
