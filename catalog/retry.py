"""Retries of transient object-store errors: one policy for the pipeline's writes and the training reads.

An object store answers a small share of requests with 503 (SlowDown, ServiceUnavailable), resets a connection,
or times out; the same request a moment later succeeds. Such an error costs a retry here, not the run: the call is
repeated up to :attr:`RetryPolicy.tries` times with exponential backoff (first wait :attr:`RetryPolicy.first_wait_s`,
doubled each time, capped at :attr:`RetryPolicy.max_wait_s`, with jitter so that many DataLoader workers do not retry
in lockstep). Anything else (a missing key, a denied request, a bad argument) is raised at once.

The backends retry some errors themselves (botocore up to 5 attempts, s3fs on dropped connections); this layer
is the one that every backend gets (gcsfs, adlfs, an S3 endpoint whose client was told not to retry), and the
one the tests check with the backend's own retries switched off.

Tuning without code: ``MED3D_RETRY_TRIES`` (attempts in all, default 6) and ``MED3D_RETRY_WAIT_S`` (first wait in
seconds, default 0.2). Each retry is logged on the ``med3d.retry`` logger (warning level) with what was retried
and why; credentials never appear (the messages are the backend's error text and the key).
"""
from __future__ import annotations

import asyncio
import errno
import logging
import os
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

__all__ = ["RetryPolicy", "is_transient", "retry_call", "retry_async", "policy_from_env"]

T = TypeVar("T")
log = logging.getLogger("med3d.retry")
_jitter = random.Random()  # its own generator: a retry must not move the global random state a run may rely on

_TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_TRANSIENT_ERRNO = frozenset({errno.EBUSY, errno.EAGAIN, errno.ETIMEDOUT, errno.ECONNRESET, errno.ECONNABORTED,
                              errno.EPIPE, errno.ECONNREFUSED})
# Error classes of optional backends (aiohttp, botocore, urllib3, http.client, fsspec), matched by name so that
# none of them has to be installed.
_TRANSIENT_NAMES = frozenset({
    "ServerDisconnectedError", "ClientPayloadError", "ClientConnectionError", "ClientOSError",
    "ServerTimeoutError", "HTTPClientError", "EndpointConnectionError", "ConnectionClosedError",
    "ReadTimeoutError", "ConnectTimeoutError", "IncompleteRead", "ResponseParserError", "FSTimeoutError",
    "ProtocolError", "RemoteDisconnected",
})
_TRANSIENT_CODES = frozenset({"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout", "Throttling",
                              "ThrottlingException", "RequestTimeTooSkewed"})


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to retry: ``tries`` attempts in all, waits of ``first_wait_s`` · 2^k seconds
    (k = 0, 1, ...) capped at ``max_wait_s``, each scaled by a random factor in [1 - jitter, 1]."""

    tries: int = 6
    first_wait_s: float = 0.2
    max_wait_s: float = 10.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if self.tries < 1:
            raise ValueError(f"retry tries must be at least 1, got {self.tries}")
        if not (self.first_wait_s >= 0 and self.max_wait_s >= 0 and 0 <= self.jitter <= 1):
            raise ValueError(f"retry waits must be >= 0 and jitter in [0, 1], got {self}")

    def wait_s(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        base = min(self.first_wait_s * 2 ** (attempt - 1), self.max_wait_s)
        return base * (1 - self.jitter * _jitter.random())

    def max_total_wait_s(self) -> float:
        """The longest a call can spend waiting between its attempts (no jitter), in seconds."""
        return sum(min(self.first_wait_s * 2 ** k, self.max_wait_s) for k in range(self.tries - 1))


def policy_from_env(environ: dict[str, str] | None = None) -> RetryPolicy:
    """The policy with ``MED3D_RETRY_TRIES`` and ``MED3D_RETRY_WAIT_S`` applied where set."""
    env = os.environ if environ is None else environ
    try:
        tries = int(env.get("MED3D_RETRY_TRIES", RetryPolicy.tries))
        wait = float(env.get("MED3D_RETRY_WAIT_S", RetryPolicy.first_wait_s))
    except ValueError as exc:
        raise ValueError(f"MED3D_RETRY_TRIES must be an integer and MED3D_RETRY_WAIT_S a number of seconds: {exc}"
                         ) from None
    return RetryPolicy(tries=tries, first_wait_s=wait)


def _status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)  # botocore ClientError
    if isinstance(response, dict):
        code = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if isinstance(code, int):
            return code
    for name in ("status", "code", "status_code"):  # aiohttp, gcsfs, requests-style errors
        value = getattr(exc, name, None)
        if isinstance(value, int) and 100 <= value < 600:
            return value
    return None


def _one_is_transient(exc: BaseException) -> bool:
    if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
        return False
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    if isinstance(exc, OSError) and exc.errno in _TRANSIENT_ERRNO:
        return True  # s3fs maps 503 SlowDown / ServiceUnavailable to EBUSY
    if any(cls.__name__ in _TRANSIENT_NAMES for cls in type(exc).__mro__):
        return True
    response = getattr(exc, "response", None)
    if isinstance(response, dict) and response.get("Error", {}).get("Code") in _TRANSIENT_CODES:
        return True
    return _status(exc) in _TRANSIENT_STATUS


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` (or an error it was raised from) is one that the same request may not meet again: a 408,
    429 or 5xx answer, a reset or refused connection, a timeout. Missing keys and denied requests are not."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen and len(seen) < 8:
        if isinstance(cur, (FileNotFoundError, PermissionError)):
            return False
        if _one_is_transient(cur):
            return True
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return False


def _note(what: str, attempt: int, policy: RetryPolicy, exc: BaseException, wait: float) -> None:
    log.warning("%s: transient error on attempt %d of %d (%s: %s); retrying in %.2f s",
                what, attempt, policy.tries, type(exc).__name__, str(exc)[:200], wait)


def retry_call(fn: Callable[[], T], what: str, policy: RetryPolicy | None = None) -> T:
    """``fn()``, repeated on transient errors as ``policy`` says (default: :func:`policy_from_env`).

    ``what`` names the object for the log and the final error (a key or path, never credentials). The last
    error is raised as it came once the tries are used up.
    """
    policy = policy or policy_from_env()
    for attempt in range(1, policy.tries + 1):
        try:
            return fn()
        except Exception as exc:
            if attempt == policy.tries or not is_transient(exc):
                raise
            wait = policy.wait_s(attempt)
            _note(what, attempt, policy, exc, wait)
            time.sleep(wait)
    raise AssertionError("unreachable")  # the loop returns or raises


async def retry_async(fn: Callable[[], Awaitable[T]], what: str, policy: RetryPolicy | None = None) -> T:
    """The coroutine version of :func:`retry_call`: ``await fn()``, waiting with ``asyncio.sleep``."""
    policy = policy or policy_from_env()
    for attempt in range(1, policy.tries + 1):
        try:
            return await fn()
        except Exception as exc:
            if attempt == policy.tries or not is_transient(exc):
                raise
            wait = policy.wait_s(attempt)
            _note(what, attempt, policy, exc, wait)
            await asyncio.sleep(wait)
    raise AssertionError("unreachable")
