"""zarr stores on fsspec URLs (``s3://``, ``gs://``...) whose every request retries transient errors.

:func:`open_store` turns a store URL into a zarr ``FsspecStore`` wrapped in :class:`RetryingStore`: each get, set,
exists, delete and listing is one object-store request (or a few), and each is retried on its own as
:mod:`catalog.retry` says. Retrying single requests rather than whole cases keeps the cost of a 503 at one
request: a case write is dozens of requests, and at a failure rate of one request in five a whole-case retry
would almost never get through.

Credentials and endpoints come from the backend's own environment (for S3: ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL_S3``/``AWS_ENDPOINT_URL`` or ``FSSPEC_S3_ENDPOINT_URL``, or
``~/.aws``), never from arguments that could end up in logs, checkpoints or the catalog.
"""
from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Iterable
from typing import Any

from zarr.abc.store import ByteRequest
from zarr.core.buffer import Buffer, BufferPrototype
from zarr.storage import FsspecStore, WrapperStore

from .retry import RetryPolicy, policy_from_env, retry_async

__all__ = ["RetryingStore", "is_remote", "open_store"]


def is_remote(path: str) -> bool:
    """Whether a store path is an fsspec URL of another file system than the local one."""
    return "://" in str(path) and not str(path).startswith("file://")


class RetryingStore(WrapperStore[Any]):
    """A zarr store that retries each request of the wrapped store on transient errors (503, resets, timeouts)."""

    def __init__(self, store: Any, policy: RetryPolicy | None = None) -> None:
        super().__init__(store)
        self.policy = policy or policy_from_env()

    def _with_store(self, store: Any) -> RetryingStore:
        return type(self)(store, self.policy)

    def _what(self, key: str) -> str:
        return f"{self._store}/{key}"

    async def get(self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None
                  ) -> Buffer | None:
        return await retry_async(lambda: self._store.get(key, prototype, byte_range), self._what(key), self.policy)

    async def get_partial_values(self, prototype: BufferPrototype,
                                 key_ranges: Iterable[tuple[str, ByteRequest | None]]) -> list[Buffer | None]:
        key_ranges = list(key_ranges)
        return [await self.get(key, prototype, byte_range) for key, byte_range in key_ranges]

    async def _get_many(self, requests: Iterable[tuple[str, BufferPrototype, ByteRequest | None]]
                        ) -> AsyncGenerator[tuple[str, Buffer | None], None]:
        for key, prototype, byte_range in requests:
            yield key, await self.get(key, prototype, byte_range)

    async def exists(self, key: str) -> bool:
        return await retry_async(lambda: self._store.exists(key), self._what(key), self.policy)

    async def set(self, key: str, value: Buffer) -> None:
        await retry_async(lambda: self._store.set(key, value), self._what(key), self.policy)

    async def set_if_not_exists(self, key: str, value: Buffer) -> None:
        await retry_async(lambda: self._store.set_if_not_exists(key, value), self._what(key), self.policy)

    async def _set_many(self, values: Iterable[tuple[str, Buffer]]) -> None:
        for key, value in values:
            await self.set(key, value)

    async def delete(self, key: str) -> None:
        await retry_async(lambda: self._store.delete(key), self._what(key), self.policy)

    async def delete_dir(self, prefix: str) -> None:
        await retry_async(lambda: self._store.delete_dir(prefix), self._what(prefix), self.policy)

    async def is_empty(self, prefix: str) -> bool:
        return await retry_async(lambda: self._store.is_empty(prefix), self._what(prefix), self.policy)

    async def _listed(self, listing: Any, what: str) -> list[str]:
        async def collect() -> list[str]:
            return [key async for key in listing()]

        return await retry_async(collect, what, self.policy)

    async def list(self) -> AsyncIterator[str]:  # type: ignore[override]
        for key in await self._listed(self._store.list, self._what("")):
            yield key

    async def list_prefix(self, prefix: str) -> AsyncIterator[str]:  # type: ignore[override]
        for key in await self._listed(lambda: self._store.list_prefix(prefix), self._what(prefix)):
            yield key

    async def list_dir(self, prefix: str) -> AsyncIterator[str]:  # type: ignore[override]
        for key in await self._listed(lambda: self._store.list_dir(prefix), self._what(prefix)):
            yield key


def open_store(url: str, *, read_only: bool = False, storage_options: dict[str, Any] | None = None,
               policy: RetryPolicy | None = None) -> RetryingStore:
    """The zarr store at fsspec URL ``url``, retrying transient errors request by request (see the module doc)."""
    return RetryingStore(FsspecStore.from_url(url, storage_options=storage_options, read_only=read_only), policy)
