"""Streaming responses under ASGI, without Django's "must consume synchronous iterators" warning.

WhiteNoise serves static files as a FileResponse whose content is a
synchronous iterator over the file. Served asynchronously (uvicorn, daphne),
Django reads such content whole in a thread (sync_to_async(list)) and warns on
every worker's first file. This middleware, placed before WhiteNoise, reads it
whole in the thread the sync middleware already runs in and hands Django the
bytes as an asynchronous iterator: the same work, said once, no warning. The
project streams nothing large (its static files are the pages' scripts and
styles), so nothing is lost by reading a file at once.
"""
from django.core.handlers.asgi import ASGIRequest


class ReadSyncStreams:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        if response.streaming and not response.is_async and isinstance(request, ASGIRequest):
            # The old content's file stays among the response's closers: closed after sending.
            response.streaming_content = _once(b"".join(response.streaming_content))
        return response


async def _once(body):
    yield body
