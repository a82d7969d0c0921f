"""Refusing request bodies too large to hold an acceptable upload, or framed ambiguously,
before anything reads them."""

from __future__ import annotations

import json

from starlette.exceptions import HTTPException as StarletteHTTPException

from ..settings import Settings

# Multipart framing per part (boundary, headers) and the form fields besides the files.
_PART_OVERHEAD = 16 * 1024
_FORM_OVERHEAD = 1024 * 1024
AMBIGUOUS = ("a request may have Content-Length or Transfer-Encoding, not both; "
             "send one of them")


def max_request_bytes(settings: Settings) -> int:
    """The largest request body that can hold an acceptable upload: every file at its limit."""
    return settings.max_files_per_job * (settings.max_upload_bytes + _PART_OVERHEAD) + _FORM_OVERHEAD


class BodyTooLarge(StarletteHTTPException):
    """Raised from receive(): FastAPI passes HTTPExceptions from the body parser through, so
    the request is answered 413 by the usual HTTP exception handling."""

    def __init__(self, message: str):
        super().__init__(413, message, headers={"Connection": "close"})


class BodyLimit:
    """Pure ASGI middleware: 413 for a request body above `max_bytes`, told by Content-Length
    before anything is read, or counted while a chunked body streams in. Without it the
    multipart parser would spool any amount of data to disk before the per-file checks run."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    def _message(self) -> str:
        return (f"request body larger than {self.max_bytes} bytes "
                "(FACE2PAINT_MAX_UPLOAD_BYTES per file x FACE2PAINT_MAX_FILES_PER_JOB)")

    async def _reject(self, send, status: int = 413, message: str | None = None) -> None:
        body = json.dumps({"detail": message or self._message()}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        lengths = [v for k, v in scope.get("headers", ()) if k == b"content-length"]
        if lengths and any(k == b"transfer-encoding" for k, _ in scope.get("headers", ())):
            # Conformant servers let Transfer-Encoding win, but a proxy in front that trusts
            # Content-Length would see another request boundary (request smuggling).
            return await self._reject(send, 400, AMBIGUOUS)
        for value in lengths:
            try:
                declared = int(value)
            except ValueError:
                declared = 0
            if declared > self.max_bytes:
                return await self._reject(send)
        seen = 0
        started = False

        async def counting_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise BodyTooLarge(self._message())
            return message

        async def tracking_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await self._reject(send)
