"""WebSocket close codes the server sends.

Standard codes where one fits (the reference closes with none); the 4100
range is ours. daphne (autobahn) lets applications send only 1000 and
3000-4999, so there a standard code arrives as 4000 plus its last three
digits (1008 as 4008): see PeerConsumer.close_with.
"""
NORMAL = 1000  # the peer asked to leave (LEAVE without dst)
GOING_AWAY = 1001  # the worker is shutting down: reconnect, another worker takes you
POLICY = 1008  # after an ERROR or ID-TAKEN: the server refused the socket
TOO_BIG = 1009  # frames over PEERJS_MAX_FRAME_BYTES
SERVER_ERROR = 1011  # the server failed on this socket: a bug (logged, counted), or it could not write to it
TRY_AGAIN = 1013  # the database is away: nothing is wrong with the client, try again shortly
REPLACED = 4100  # the same id and token connected on another socket
TIMEOUT = 4101  # no frame at all within alive_timeout
DISCONNECTED = 4102  # an operator disconnected the peer (admin action)
WORKER_LOST = 4103  # this worker's registrations were reaped; reconnect
TOO_SLOW = 4104  # the client did not read what it was sent
BANNED = 4105  # the peer id or client address is banned (after an ERROR saying until when)
