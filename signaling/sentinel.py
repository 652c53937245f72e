"""Redis Sentinel: where the master of the moment is.

With ``REDIS_SENTINELS`` set, no worker keeps a Redis address: every
connection it opens (the bus's, the rate limits', the readiness probe's)
first asks the sentinels for the master of ``REDIS_SENTINEL_MASTER``, so a
connection that a failover broke is opened again on the promoted replica.
What was in flight when the old master went follows what a Redis restart
means for it (signaling.bus: sent again, or its sender told). ``REDIS_URL``
then gives the master's password, database and scheme (``rediss://`` for
TLS); its host is not used. The sentinels themselves are asked over plain
TCP, or TLS with ``REDIS_SENTINEL_TLS``, and with REDIS_URL's credentials
only with ``REDIS_SENTINEL_AUTH``.

redis-py users get redis-py's own Sentinel support (:func:`client`); the
bus's hand-written connection (signaling.bus.wire) gets :class:`MasterConnection`.
"""
from urllib.parse import unquote, urlsplit

import hiredis
import redis.asyncio
from redis.asyncio.sentinel import Sentinel

from signaling.bus import wire

DEFAULT_PORT = 26379  # a sentinel's


def parse_address(text):
    """(host, port) of ``host:port`` (``[::1]:26379`` for IPv6; the port defaults to 26379); ValueError if it is none."""
    text = text.strip()
    parts = urlsplit(f"//{text}")
    port = parts.port  # ValueError for a port that is no number or out of range
    if not parts.hostname or port == 0 or parts.netloc != text or "@" in text:  # a path, query or credentials
        raise ValueError(text)
    return parts.hostname, DEFAULT_PORT if port is None else port


def master_settings(url):
    """What REDIS_URL says of the master when the sentinels give its address: credentials, database, TLS."""
    parts = urlsplit(url)
    database = parts.path.strip("/")
    return {
        "username": unquote(parts.username) if parts.username else None,
        "password": unquote(parts.password) if parts.password else None,
        "db": int(database) if database else 0,
        "ssl": parts.scheme == "rediss",
    }


def asking(o, settings):
    """How redis-py asks the sentinels: REDIS_URL's username and password with REDIS_SENTINEL_AUTH, TLS with REDIS_SENTINEL_TLS."""
    how = {"ssl": True} if o.redis_sentinel_tls else {}
    if o.redis_sentinel_auth:
        how.update(username=settings["username"], password=settings["password"])
    return how


def client(o, **kwargs):
    """A redis-py client of the master: REDIS_URL's server, or the sentinels' master of the moment.

    Without sentinels, ``Redis.from_url``. With them, redis-py's
    ``Sentinel.master_for``: each connection it opens asks the sentinels
    where the master is, so the first command after a failover (which the
    broken connection fails) reaches the new one on a client's retry or
    its next call.
    """
    if not o.redis_sentinels:
        return redis.asyncio.Redis.from_url(o.redis_url, **kwargs)
    settings = master_settings(o.redis_url)
    # The socket options (timeouts) apply to the sentinels too.
    how = {**{k: v for k, v in kwargs.items() if k.startswith("socket_")}, **asking(o, settings)}
    sentinels = Sentinel(o.redis_sentinels, sentinel_kwargs=how)
    return sentinels.master_for(o.redis_sentinel_master, **settings, **kwargs)


async def master_address(sentinels, master, username=None, password=None, tls=False):
    """(host, port) of ``master``'s master by the first sentinel that knows; ConnectionError if none does.

    ``username`` and ``password``: the sentinels' own (REDIS_SENTINEL_AUTH);
    ``tls``: they are asked over TLS (REDIS_SENTINEL_TLS).
    """
    failures = []
    for host, port in sentinels:
        connection = wire.Connection(host, port, username, password, tls=tls)
        try:
            await connection.open()
            (reply,) = await connection.call([("SENTINEL", "get-master-addr-by-name", master)], wire.CONNECT_TIMEOUT)
        except (OSError, TimeoutError) as exc:
            failures.append(f"{host}:{port}: {exc!r}")
            continue
        finally:
            connection.close()
        if isinstance(reply, hiredis.ReplyError) or not reply:
            # An error, or nil: this sentinel does not monitor a master of that name.
            failures.append(f"{host}:{port}: {reply or 'does not know ' + repr(master)}")
            continue
        return reply[0].decode(), int(reply[1])
    raise ConnectionError(f"no sentinel gave the master of {master!r}: {'; '.join(failures)}")


class MasterConnection(wire.Connection):
    """A signaling.bus.wire connection to the master of the moment: asked of the sentinels at each open.

    It refuses a server that is no master: the sentinels' answer may be a
    moment old (a planned failover demotes the old master, which lives on).
    """

    def __init__(self, sentinels, master, username=None, password=None, tls=False, sentinel_auth=False,
                 sentinel_tls=False):
        super().__init__(None, None, username, password, tls)
        self.sentinels = sentinels
        self.master = master
        self.sentinel_auth = sentinel_auth  # the sentinels take the master's credentials too
        self.sentinel_tls = sentinel_tls  # the sentinels are asked over TLS

    async def open(self):
        credentials = (self.username, self.password) if self.sentinel_auth else (None, None)
        self.host, self.port = await master_address(self.sentinels, self.master, *credentials, tls=self.sentinel_tls)
        await super().open()
        try:
            (role,) = await self.call([("ROLE",)], wire.CONNECT_TIMEOUT)
        except BaseException:
            self.close()
            raise
        if isinstance(role, hiredis.ReplyError) or role[0] != b"master":
            self.close()
            what = role if isinstance(role, hiredis.ReplyError) else role[0].decode()
            raise ConnectionError(f"Redis at {self.host}:{self.port}, named master of {self.master!r}, says {what}")
        return self
