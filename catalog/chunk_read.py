"""Direct chunk reads from a local zarr v3 array: the hot path of patch streaming.

A training patch (e.g. 128³ voxels of one channel) overlaps a few dozen chunk files. zarr-python's own
slicing spends most of its time in per-chunk machinery (async codec pipeline, index objects, thread hops);
here each overlapping chunk file is opened once and read into a buffer that is reused for every chunk, and only
the slab that overlaps the requested box is copied into the output, casting to the output's dtype on the way.
A raw chunk (Blosc level 0, how the pipeline stores images by default) is not decoded at all: one ``preadv``
fetches just the byte range that spans the box's rows. A compressed chunk is read whole and Blosc-decoded.
``benchmarks/loader.py`` measures both paths against zarr-python (2.6 against 19 ms per random 128³ patch of raw images).

The fast path needs exactly what ``pipeline/store.py`` writes (through :mod:`catalog.chunk_write`): a regular chunk grid, the ``default`` (or
``v2``) chunk key encoding, the codec chain ``bytes`` (little endian) + ``blosc``, no sharding and no storage
transformers, a numeric data type and a numeric fill value. Blosc frames carry their own header (type size,
shuffle, compressor), so the codec's configuration is not needed to decode. Any other array (another codec
chain, sharding, a remote ``s3://`` store) is opened with zarr-python and read through it: same results,
slower (a local one after the same file checks; an object store has no links or devices to check).

A store read for training may have been copied, cut short or crafted, so nothing in it is trusted further than
it can be checked before the read (README "Damaged inputs"): the array's shape must be the one the caller
expects (the catalog row's, :mod:`catalog.case_arrays`) and its chunk no larger than the array, before any
buffer is allocated; a chunk file is opened only where it lies inside the store (a symbolic link is resolved and
must stay in the store root) and only when it is a regular file of a size its codec can produce (a raw chunk:
exactly its header and bytes; a Blosc frame: at most the chunk's bytes and the header), so a link to
``/dev/zero`` or a huge sparse file is refused, not read. Every such refusal is a :class:`DamagedStoreError`.
"""
from __future__ import annotations

import errno
import itertools
import math
import os
import stat
from collections.abc import Sequence
from typing import Any

import numpy as np
import numcodecs

from .store_files import (
    REBUILD_HINT, DamagedStoreError, check_local_files, file_problem, refuse_outside, store_root, truncated_error,
)
from .store_format import chunk_prefix, is_local, meta_path, node_meta

_NUMERIC = frozenset({
    "bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
    "float16", "float32", "float64",
})
_NAMED_FLOATS = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
_BLOSC_HEADER = 16  # Blosc 1 frame header: version, versionlz, flags, typesize, nbytes, blocksize, cbytes
_MEMCPYED = 0x02  # flags bit: the frame holds the bytes as they are (no shuffle, no compression)
# A chunk may be larger than its array (a 35-voxel axis in 64-voxel chunks) but not by more than this: the
# reader allocates one chunk, so a crafted chunk_shape must not decide how much memory that is.
_MAX_CHUNK_VOXELS = 512 ** 3


class ChunkedArrayReader:
    """Read boxes of one zarr v3 array, decoding only the chunks a box overlaps.

    ``path`` is the array's folder (the one holding its ``zarr.json``), e.g. ``STORE/heart/la_003/image``.
    Local folders with the codec chain the pipeline writes take the direct path (:attr:`direct` is True);
    anything else (other codecs, sharding, an fsspec URL) falls back to zarr-python.

    Nothing is cached across reads except one decode buffer of one chunk's size: training patches come from
    random cases, so consecutive reads rarely share a chunk (a decoded-chunk cache would have to hold whole
    volumes to hit). The reader holds no open files or thread pools; create readers inside DataLoader workers.
    """

    def __init__(self, path: str | os.PathLike[str], *, expect_shape: Sequence[int] | None = None,
                 max_shape: Sequence[int] | None = None, expected_by: str = "the catalog") -> None:
        """``expect_shape``: the shape the array must have; ``max_shape``: per axis the most it may have (both
        checked, with the chunk's size, before anything is allocated or read; a mismatch is a
        :class:`DamagedStoreError` naming ``expected_by``)."""
        self.path = os.fspath(path)
        self._zarr: Any = None
        meta = self._local_metadata()
        why_not = _unsupported(meta) if meta is not None else "not a local folder with a zarr.json"
        if why_not is None:
            self.shape: tuple[int, ...] = tuple(int(s) for s in meta["shape"])
            self.chunks: tuple[int, ...] = tuple(int(c) for c in meta["chunk_grid"]["configuration"]["chunk_shape"])
            self.dtype = np.dtype(meta["data_type"]).newbyteorder("<")
            self._check_metadata(expect_shape, max_shape, expected_by)
            self.fill_value = _fill_value(meta["fill_value"], self.dtype)
            self._prefix, self._sep = chunk_prefix(self.path, meta["chunk_key_encoding"])
            self._codec = numcodecs.Blosc()
            self._raw = meta["codecs"][1].get("configuration", {}).get("clevel") == 0
            self._root = store_root(self.path)
            self._dirs_inside: set[str] = set()
            self._buf = np.empty(math.prod(self.chunks) * self.dtype.itemsize, np.uint8)
            self._chunk_view = self._buf.view(self.dtype).reshape(self.chunks)
            self.fallback_reason = ""
        else:
            import zarr

            from .remote_store import is_remote, open_store

            # On an object store each request retries transient errors (503, resets): catalog/remote_store.py
            target = open_store(self.path, read_only=True) if is_remote(self.path) else self.path
            self._zarr = zarr.open_array(target, mode="r")
            self.shape = tuple(int(s) for s in self._zarr.shape)
            self.chunks = tuple(int(c) for c in self._zarr.chunks)
            self.dtype = np.dtype(self._zarr.dtype)
            self._check_metadata(expect_shape, max_shape, expected_by)
            if meta is not None:  # a local array zarr-python will read: its files pass the same checks first
                check_local_files(self.path, math.prod(self.chunks) * self.dtype.itemsize)
            self.fill_value = self._zarr.fill_value
            self.fallback_reason = why_not

    def _check_metadata(self, expect_shape: Sequence[int] | None, max_shape: Sequence[int] | None,
                        expected_by: str) -> None:
        """Refuse metadata that disagrees with what the caller knows of the array, or a chunk larger than the
        array and :data:`_MAX_CHUNK_VOXELS`, before a byte is allocated for it."""
        meta = meta_path(self.path)
        if expect_shape is not None and self.shape != tuple(int(s) for s in expect_shape):
            raise DamagedStoreError(f"{meta}: shape {list(self.shape)} differs from {expected_by}'s "
                                    f"{[int(s) for s in expect_shape]}: {REBUILD_HINT}")
        if max_shape is not None and (len(self.shape) != len(max_shape)
                                      or any(s > int(m) for s, m in zip(self.shape, max_shape))):
            raise DamagedStoreError(f"{meta}: shape {list(self.shape)} exceeds the {[int(m) for m in max_shape]} "
                                    f"{expected_by} allows: {REBUILD_HINT}")
        if len(self.chunks) != len(self.shape) or min(self.chunks, default=1) < 1 or \
                math.prod(self.chunks) > max(math.prod(self.shape), _MAX_CHUNK_VOXELS):
            raise DamagedStoreError(f"{meta}: chunk shape {list(self.chunks)} does not fit the array's shape "
                                    f"{list(self.shape)}: {REBUILD_HINT}")

    @property
    def direct(self) -> bool:
        """True when reads decode chunk files directly, False when they go through zarr-python."""
        return self._zarr is None

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def _local_metadata(self) -> dict[str, Any] | None:
        if not is_local(self.path):
            return None
        self.path = self.path.removeprefix("file://")
        meta = node_meta(self.path)
        file = meta_path(self.path)
        if meta is None and os.path.lexists(file):  # there but unreadable: zarr-python must not read it either
            problem = file_problem(file, store_root(self.path)) or "not readable as JSON metadata"
            raise DamagedStoreError(f"{file}: {problem}, in place of the array's metadata: {REBUILD_HINT}")
        return meta

    def read(
        self,
        starts: Sequence[int],
        stops: Sequence[int],
        pad: float = 0,
        out: np.ndarray | None = None,
    ) -> np.ndarray:
        """The box ``[starts, stops)`` (one pair per array axis, in voxels); parts outside the array are ``pad``.

        Starts may be negative and stops may exceed the shape (volumes smaller than a patch, patches at the
        border). Returns an array of shape ``stops - starts`` in the array's dtype, or writes into ``out``
        (any dtype of that shape; the cast happens during the copy, but numpy's float16 -> float32 cast is
        ~30x slower than torch's, so hot paths read float16 and cast with ``Tensor.copy_``).
        """
        starts = [int(s) for s in starts]
        stops = [int(s) for s in stops]
        if len(starts) != self.ndim or len(stops) != self.ndim:
            raise ValueError(f"{self.path}: a box needs {self.ndim} starts and stops, got {starts} and {stops}")
        box = tuple(b - a for a, b in zip(starts, stops))
        if min(box, default=0) < 0:
            raise ValueError(f"{self.path}: stops {stops} lie before starts {starts}")
        if out is None:
            out = np.empty(box, self.dtype)
        elif out.shape != box:
            raise ValueError(f"{self.path}: out has shape {out.shape}, the box {box}")
        lo = [max(a, 0) for a in starts]
        hi = [min(b, n) for b, n in zip(stops, self.shape)]
        if any(h <= l for l, h in zip(lo, hi)):
            out.fill(pad)
            return out
        if lo != starts or hi != stops:
            out.fill(pad)  # cheaper than filling up to 2·ndim border slabs separately
        if self._zarr is not None:
            out[tuple(slice(l - a, h - a) for l, h, a in zip(lo, hi, starts))] = \
                self._zarr[tuple(slice(l, h) for l, h in zip(lo, hi))]
            return out
        self._read_direct(lo, hi, starts, out)
        return out

    def _read_direct(self, lo: list[int], hi: list[int], starts: list[int], out: np.ndarray) -> None:
        # Per axis, the chunk indices the box overlaps with the (source, destination) slices of each and the
        # byte offsets, within the chunk, of the first and last overlapped index: computed once per axis, so the
        # loop over chunks only combines precomputed parts.
        per_axis = []
        for l, h, a, c, stride in zip(lo, hi, starts, self.chunks, self._chunk_view.strides):
            spans = []
            for i in range(l // c, (h - 1) // c + 1):
                s, e = max(l, i * c), min(h, (i + 1) * c)
                spans.append((str(i), slice(s - i * c, e - i * c), slice(s - a, e - a),
                              (s - i * c) * stride, (e - 1 - i * c) * stride))
            per_axis.append(spans)
        view, item = self._chunk_view, self.dtype.itemsize
        for combo in itertools.product(*per_axis):
            key = self._prefix + self._sep.join([part[0] for part in combo])
            src = tuple([part[1] for part in combo])
            fd = self._open_chunk(key)
            if fd is None:  # zarr does not write chunks that hold only the fill value
                out[tuple([part[2] for part in combo])] = self.fill_value
                continue
            first = last = 0
            for part in combo:
                first += part[3]
                last += part[4]
            try:
                self._load_chunk(fd, key, first, last + item)
            finally:
                os.close(fd)
            out[tuple([part[2] for part in combo])] = view[src]

    def _open_chunk(self, key: str) -> int | None:
        """The chunk file ``key`` open for reading, or None when there is none (a chunk of fill values).

        The one place chunk files are opened, so the one place they are checked: the file and its folder must lie
        inside the store root (a symbolic link is followed only when its target does), and it must be a regular
        file of a size its codec can produce (:meth:`_check_size`). Each folder is resolved once per reader, and
        the file itself is opened without following a link, so a plain chunk costs one open and one fstat.
        """
        folder = key.rpartition(os.sep)[0]
        if folder not in self._dirs_inside:
            refuse_outside(folder, self._root, key)
            self._dirs_inside.add(folder)
        # O_NONBLOCK: opening a named pipe must not wait for a writer (it is refused just after).
        flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0)
        try:
            fd = os.open(key, flags)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno != errno.ELOOP:  # ELOOP: the file is a symbolic link
                raise
            refuse_outside(key, self._root, key)
            try:
                fd = os.open(key, os.O_RDONLY | os.O_NONBLOCK)
            except FileNotFoundError:
                raise DamagedStoreError(f"{key}: a broken symbolic link in place of a chunk file: {REBUILD_HINT}") from None
        try:
            self._check_size(key, os.fstat(fd))
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _check_size(self, key: str, st: os.stat_result) -> None:
        """Refuse a chunk file that is not a regular file, or whose size its codec cannot produce: a raw array's
        chunk is exactly its 16-byte header and bytes, a Blosc frame never more (Blosc stores a chunk it cannot
        shrink as it is)."""
        if not stat.S_ISREG(st.st_mode):
            raise DamagedStoreError(f"{key}: not a regular file (a device, pipe or folder) in place of a chunk "
                                    f"file: {REBUILD_HINT}")
        bound = self._buf.nbytes + _BLOSC_HEADER
        if self._raw and st.st_size < bound:
            raise truncated_error(key, st.st_size, bound, "a raw chunk has")
        if st.st_size > bound:
            rule = "a raw chunk has" if self._raw else "a Blosc frame of this chunk has at most"
            raise DamagedStoreError(f"{key}: chunk file has {st.st_size:,} bytes; {rule} {bound:,}: {REBUILD_HINT}")

    def _load_chunk(self, fd: int, key: str, first: int, stop: int) -> None:
        """Fill the decode buffer with (at least) bytes ``[first, stop)`` of the chunk in the file open as ``fd``.

        A raw Blosc frame (level 0, or data Blosc found incompressible: the "memcpyed" flag) holds the chunk's
        bytes as they are after its 16-byte header, so only that byte range is read, straight into place, and
        nothing is decoded. Blosc writes nothing but raw frames at level 0, so in arrays whose metadata says
        level 0 the header is not even read. Any other frame is read whole and decoded.
        """
        buf, size = self._buf, self._buf.nbytes
        if not self._raw:
            head = os.pread(fd, _BLOSC_HEADER, 0)
            if len(head) < _BLOSC_HEADER:
                raise truncated_error(key, len(head), _BLOSC_HEADER, "at least")
            raw = head[2] & _MEMCPYED and int.from_bytes(head[4:8], "little") == size and \
                int.from_bytes(head[12:16], "little") == size + _BLOSC_HEADER
            if not raw:
                # A Blosc frame is never larger than its data plus the header: a damaged size field cannot make
                # this read allocate more (Blosc then reports the frame as corrupt).
                rest = max(min(int.from_bytes(head[12:16], "little"), size + _BLOSC_HEADER) - _BLOSC_HEADER, 0)
                body = os.pread(fd, rest, _BLOSC_HEADER)
                if len(body) < rest:
                    raise truncated_error(key, _BLOSC_HEADER + len(body), _BLOSC_HEADER + rest, "its Blosc header says")
                self._codec.decode(head + body, out=buf)
                return
        got = os.preadv(fd, [buf[first:stop]], _BLOSC_HEADER + first)
        if got != stop - first:
            raise truncated_error(key, os.fstat(fd).st_size, size + _BLOSC_HEADER, "a raw chunk has")

    def read_all(self, out: np.ndarray | None = None) -> np.ndarray:
        """The whole array, shape :attr:`shape`."""
        return self.read([0] * self.ndim, self.shape, out=out)


def _unsupported(meta: dict[str, Any]) -> str | None:
    """Why the direct path cannot read this array (None when it can)."""
    if meta.get("zarr_format") != 3 or meta.get("node_type") != "array":
        return "not a zarr v3 array"
    if meta.get("data_type") not in _NUMERIC:
        return f"data type {meta.get('data_type')!r}"
    grid = meta.get("chunk_grid", {})
    if grid.get("name") != "regular":
        return f"chunk grid {grid.get('name')!r}"
    if meta.get("storage_transformers"):
        return "storage transformers"
    enc = meta.get("chunk_key_encoding", {})
    if enc.get("name") not in ("default", "v2"):
        return f"chunk key encoding {enc.get('name')!r}"
    codecs = meta.get("codecs", [])
    names = [c.get("name") for c in codecs]
    if names != ["bytes", "blosc"]:
        return f"codec chain {names} (the direct path reads bytes + blosc)"
    endian = codecs[0].get("configuration", {}).get("endian", "little")
    if endian != "little" and np.dtype(meta["data_type"]).itemsize > 1:
        return f"{endian} endian"
    if len(meta.get("shape", [])) == 0:
        return "zero-dimensional array"
    try:
        _fill_value(meta.get("fill_value"), np.dtype(meta["data_type"]))
    except (TypeError, ValueError):
        return f"fill value {meta.get('fill_value')!r}"
    return None


def _fill_value(value: Any, dtype: np.dtype) -> Any:
    """The JSON fill value as a scalar of ``dtype`` (numbers and the named floats; raw hex bits are left to zarr)."""
    if isinstance(value, str):
        if value not in _NAMED_FLOATS or dtype.kind != "f":
            raise ValueError(f"fill value {value!r}")
        value = _NAMED_FLOATS[value]
    if value is None or isinstance(value, (list, dict)):
        raise ValueError(f"fill value {value!r}")
    return dtype.type(value)
