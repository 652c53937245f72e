"""Django signals for peers coming and going, for code that reacts to them.

Each is sent once per registration, on the worker that holds it: when a
socket has been given OPEN (``peer_connected``), and when that registration
ends, however it ends (``peer_disconnected``: the peer left or closed its
socket, timed out, was disconnected by an operator, or its worker drained).
A socket that takes over its own id from a lingering older socket is a new
registration: the older one's end and the new one's start are both sent.

Arguments, besides ``sender`` (the worker's name):

    key      the app's PeerJS key
    peer_id  the peer's id
    address  the client's IP address (str) or None
    worker   the worker's name (the same as sender)
    connection  the socket's id, unique in the cluster: a peer that
             reconnects may be connected on its new socket before its old
             one's end is sent; match them by this
    at       when, an aware datetime (UTC)

``peer_message`` is the reference's ``message`` event: sent for every
frame a registered peer sends that the server accepts
(HEARTBEAT, OFFER, ANSWER, CANDIDATE, LEAVE, …), before the server acts on
it, on the worker that holds the peer, with the same arguments plus
``message``, the frame as a dict. It costs the relay nothing until a
receiver is connected; once one is, it runs for every frame of every peer,
so keep it cheap.

They are sent from the worker's event loop with ``send_robust()``:
receivers run right there, so a receiver must be synchronous, quick and
never block (no database query, no HTTP); hand slow work to a thread or a
queue, as signaling.webhooks does. A receiver that raises is logged and
disturbs no socket.

    from signaling.signals import peer_connected

    def on_connect(sender, key, peer_id, address, worker, at, **kwargs):
        ...

    peer_connected.connect(on_connect)
"""
from django.dispatch import Signal

peer_connected = Signal()
peer_disconnected = Signal()
peer_message = Signal()
