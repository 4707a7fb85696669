"""Structured logs: one JSON object per line (or plain text), extras as fields.

Configuration *values* are never logged anywhere in etcdconfig; kopf's DEBUG
messages print whole bodies and diffs, so kopf's loggers never go below INFO.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


_SKIP = ("k8s_skip", "k8s_ref", "settings")


def extras(record: logging.LogRecord) -> dict[str, object]:
    """The structured fields a call passed with ``extra=`` (which Config, which version,
    which uid...): never configuration values, which are never passed as extras."""
    return {
        key: value if isinstance(value, str | int | float | bool | None) else str(value)
        for key, value in record.__dict__.items()
        if key not in _STANDARD and not key.startswith("_") and key not in _SKIP
    }


def _quote(value: object) -> str:
    text = (
        "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
    )
    if text == "" or any(c in text for c in ' "=\\\n\t'):
        return json.dumps(text, ensure_ascii=False)
    return text


class TextFormatter(logging.Formatter):
    """``TIME LEVEL logger: message key=value ...``: the extras as logfmt pairs (values
    with spaces, quotes or ``=`` quoted as JSON strings)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = extras(record)
        if not fields:
            return text
        pairs = " ".join(f"{k}={_quote(v)}" for k, v in fields.items())
        head, sep, tail = text.partition("\n")  # a traceback stays below the pairs
        return f"{head} {pairs}{sep}{tail}"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        out.update(extras(record))
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def configure(fmt: str = "json", level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    lvl = getattr(logging, level.upper())
    root.setLevel(lvl)
    logging.getLogger("kopf").setLevel(max(lvl, logging.INFO))
    for noisy in ("aiohttp.access", "kubernetes_asyncio"):
        logging.getLogger(noisy).setLevel(max(lvl, logging.WARNING))
