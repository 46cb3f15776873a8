"""Credentials in URLs never reach a message, a log, a config or a checkpoint.

A store URL may carry them (``s3://KEY:SECRET@bucket/store``, ``http://user:pass@host/x``): fsspec accepts such
URLs, and every message naming the store would then print the secret. :func:`redact_url` replaces the userinfo
of every URL in a text by ``***`` (``s3://***@bucket/store``); :func:`redact_urls` does it to every string of a
JSON-like value (what configs and checkpoints are made of). Both ``med3d-prep`` and ``med3d-train`` print through
:func:`redacted_cli`, and the project writes configs, run files and checkpoints through :func:`redact_urls`.

Credentials belong in the backend's environment (``AWS_ACCESS_KEY_ID``, ``~/.aws``...; see
:mod:`catalog.remote_store`): a URL recorded with ``***`` in it cannot reopen the store, on purpose.

>>> redact_url("cannot open s3://AKIA:abc/def+g@bucket/store: no catalog")
'cannot open s3://***@bucket/store: no catalog'
"""
from __future__ import annotations

import io
import re
import sys
import traceback
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TextIO

__all__ = ["redact_url", "redact_urls", "redacted_cli"]

# scheme://USER@ or scheme://USER:PASSWORD@. The user part stops at '/', so ``s3://bucket/key@v2`` is left alone;
# a password runs to the last '@' of the word: AWS secret keys hold '/' and '+', and a raw '@' is seen in
# pasted passwords too. A ':' after the host (``http://host:8080/a@b``) is read as a password: over-redaction
# of such a rare URL is the safe side.
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)[^\s/?#:'\"]*(?::[^\s'\"]*)?@")


def redact_url(text: str) -> str:
    """``text`` with the userinfo of every URL in it (``scheme://user:pass@``, ``scheme://user@``) replaced by
    ``scheme://***@``; any other text is returned unchanged."""
    return _USERINFO.sub(r"\g<scheme>***@", text) if "://" in text else text


def redact_urls(value: Any) -> Any:
    """``value`` with :func:`redact_url` applied to every string in it, through mappings (keys too), lists and
    tuples. Containers without a URL to redact are returned as they are (the same object: a model's state dict
    keeps its type and metadata), others are copied; non-string leaves (tensors, numbers) are never touched."""
    if isinstance(value, str):
        return redact_url(value)
    if isinstance(value, Mapping):
        items = [(redact_urls(k), redact_urls(v)) for k, v in value.items()]
        if all(k is k0 and v is v0 for (k, v), (k0, v0) in zip(items, value.items())):
            return value
        return dict(items)
    if isinstance(value, (list, tuple)):
        items = [redact_urls(v) for v in value]
        if all(a is b for a, b in zip(items, value)):
            return value
        return items if isinstance(value, list) else tuple(items)
    return value


class _RedactingWriter(io.TextIOBase):
    """A text stream that passes every write to ``stream`` with :func:`redact_url` applied.

    It has no ``buffer``: click would otherwise write to the binary buffer below it and around the redaction."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__()
        self._stream = stream

    def write(self, text: str) -> int:
        if not isinstance(text, str):  # click probes text streams with write(b"")
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        self._stream.write(redact_url(text))
        return len(text)

    def flush(self) -> None:
        self._stream.flush()

    def isatty(self) -> bool:
        return self._stream.isatty()

    def fileno(self) -> int:
        return self._stream.fileno()

    def writable(self) -> bool:
        return True

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self._stream, "encoding", None) or "utf-8"

    @property
    def errors(self) -> str:  # type: ignore[override]
        return getattr(self._stream, "errors", None) or "strict"


@contextmanager
def redacted_cli() -> Iterator[None]:
    """Run a command line's work with URL credentials redacted from all it says (wrap a click group's ``invoke``).

    While inside: ``sys.stdout`` and ``sys.stderr`` redact every write (``click.echo``, ``print``, progress bars,
    warnings, log records of the default handler). A ``click.ClickException`` leaving it gets its message
    redacted (click prints it after ``invoke`` returns). Any other exception whose traceback names a URL with
    credentials is printed here, redacted, and becomes exit status 1 (the status of an uncaught exception);
    others go on unchanged."""
    out, err = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _RedactingWriter(out), _RedactingWriter(err)
    try:
        yield
    except Exception as exc:
        import click

        if isinstance(exc, click.ClickException):
            exc.message = redact_url(str(exc.message))
            raise
        if isinstance(exc, (click.exceptions.Exit, click.exceptions.Abort)):
            raise
        text = "".join(traceback.format_exception(exc))
        if redact_url(text) == text:
            raise
        err.write(redact_url(text))
        err.flush()
        raise SystemExit(1) from None
    finally:
        sys.stdout, sys.stderr = out, err
