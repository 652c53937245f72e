"""A TCP forwarder in a process of its own: ``python -m tests.forwarder LISTEN_PORT TARGET_PORT``.

Tests put one between a worker and its database (or its Redis) to make an
outage that worker alone sees: SIGKILL the forwarder and the kernel closes
every connection through it at once, while new ones are refused; start it
again on the same port and the way is back. A process, not a thread of the
test, so that killing it is as abrupt as a lost network path and nothing of
it lingers in the test process.

It prints "listening" once it accepts connections, for the test to wait on.
"""
import asyncio
import contextlib
import sys


async def _pump(reader, writer):
    with contextlib.suppress(OSError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    # One side ended: end the other too, as a broken path would.
    writer.close()


async def _forward(target_port, client_reader, client_writer):
    try:
        server_reader, server_writer = await asyncio.open_connection("127.0.0.1", target_port)
    except OSError:
        client_writer.close()  # the server itself is away: the client sees a closed connection
        return
    await asyncio.gather(_pump(client_reader, server_writer), _pump(server_reader, client_writer))


async def main(listen_port, target_port):
    # asyncio sets SO_REUSEADDR: a restart binds the same port although the
    # connections the kill cut may linger in TIME_WAIT.
    server = await asyncio.start_server(
        lambda reader, writer: _forward(target_port, reader, writer), "127.0.0.1", listen_port
    )
    print("listening", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2])))
