"""Text from clients made safe for log lines and error messages: control characters (C0, DEL,
C1, CR/LF, NUL) and lone surrogates become visible escapes, so a request path or a reason can
neither forge a log line, nor send terminal escapes, nor make a JSON encoder or a log handler
fail on an unencodable character.

`install()` puts the EscapeControls filter on every log handler of the API process (uvicorn's
own, the access log among them, and the root's), so our log calls and uvicorn's access log
lines are escaped alike, however the process was started.
"""

from __future__ import annotations

import logging
import re
import traceback

# C0 controls (NUL, CR, LF, ESC...), DEL, C1 controls, and UTF-16 surrogates (only ever lone
# ones in a str: a proper pair is one code point).
_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access")


def _escape_char(m: re.Match) -> str:
    c = ord(m.group())
    return f"\\x{c:02x}" if c <= 0xFF else f"\\u{c:04x}"


def escape(text: str) -> str:
    """`text` with every control character and lone surrogate written as \\xNN or \\uNNNN.
    Backslashes are left alone, so escaping twice changes nothing."""
    return _UNSAFE.sub(_escape_char, text)


def _escape_arg(arg):
    return escape(arg) if isinstance(arg, str) else arg


class EscapeControls(logging.Filter):
    """A handler filter that escapes a record's message, arguments and traceback text in place
    (before any formatter sees them). Idempotent, so a record passing several handlers is
    escaped once in effect."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "uvicorn.access" and isinstance(record.args, tuple):
            # Its formatter reads the arguments (address, method, path, version, status).
            record.args = tuple(_escape_arg(a) for a in record.args)
        else:
            try:
                message = record.getMessage()
            except Exception:  # noqa: BLE001 - a broken log call: let logging report it
                message = None
            if message is not None:
                record.msg, record.args = escape(message), None
        if record.exc_info and record.exc_info[0] is not None and not record.exc_text:
            record.exc_text = format_exception(record.exc_info)
        return True


def format_exception(exc_info) -> str:
    """A traceback whose line breaks are all its own: the frames (our code) as they are, the
    exception messages (which may hold client text) escaped, line breaks included."""
    chunks = []
    for chunk in traceback.TracebackException(*exc_info).format():
        if chunk.startswith("  File "):
            chunks.append(chunk)
        else:
            chunks.append(escape(chunk.removesuffix("\n")) + "\n")
    return "".join(chunks).removesuffix("\n")


def _handlers() -> list[logging.Handler]:
    loggers = [logging.getLogger()] + [logging.getLogger(n) for n in UVICORN_LOGGERS]
    return [h for lg in loggers for h in lg.handlers] + [logging.lastResort]


def install() -> None:
    """Escape what every current handler of the process writes (call once the server has set
    up its logging: uvicorn has by the time it builds the app)."""
    for handler in _handlers():
        if handler is not None and not any(isinstance(f, EscapeControls) for f in handler.filters):
            handler.addFilter(EscapeControls())
