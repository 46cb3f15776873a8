"""catalog.store_format.node_meta: one reader of a node's zarr.json for local paths and every fsspec URL."""
from __future__ import annotations

import fsspec
import numpy as np
import pytest
import zarr

from catalog.store_format import MARKER, node_meta


@pytest.fixture
def store(tmp_path):
    root = zarr.open_group(str(tmp_path / "store"), mode="w", zarr_format=3)
    case = root.require_group("liver").require_group("liver_7")
    case.create_array("image", shape=(1, 4, 4, 4), chunks=(1, 4, 4, 4), dtype="float16", fill_value=0)
    case.attrs[MARKER] = {"written_at": "2026-12-05T09:00:00+00:00"}
    return str(tmp_path / "store")


@pytest.fixture
def memory_copy(store):
    fs = fsspec.filesystem("memory")
    fs.put(store, "/node_meta_store", recursive=True)
    yield "memory://node_meta_store"
    fs.rm("/node_meta_store", recursive=True)


def test_the_same_metadata_from_a_path_a_file_url_and_a_memory_url(store, memory_copy, tmp_path):
    from pathlib import Path

    for where in (store, Path(store).as_uri(), memory_copy):
        case = node_meta(where, "liver", "liver_7")
        assert case["node_type"] == "group"
        assert case["attributes"][MARKER] == {"written_at": "2026-12-05T09:00:00+00:00"}
        image = node_meta(where, "liver", "liver_7", "image")
        assert image["data_type"] == "float16" and image["shape"] == [1, 4, 4, 4]
        assert node_meta(where, "liver", "nothing_here") is None


def test_a_missing_or_torn_node_is_none_or_an_error_naming_the_file(store, memory_copy):
    with open(f"{store}/liver/zarr.json", "w") as fh:
        fh.write('{"zarr_format": 3, "node_ty')  # a crash mid-write
    assert node_meta(store, "liver") is None
    with pytest.raises(ValueError, match=r"store/liver/zarr\.json: unreadable \(JSONDecodeError\)"):
        node_meta(store, "liver", required=True)
    with pytest.raises(ValueError, match=r"memory://node_meta_store/absent/zarr\.json: missing: .*rebuild"):
        node_meta(memory_copy, "absent", required=True)
    fsspec.filesystem("memory").pipe("/node_meta_store/list/zarr.json", b"[1, 2]")
    assert node_meta(memory_copy, "list") is None
    assert np.dtype(node_meta(memory_copy, "liver", "liver_7", "image")["data_type"]).itemsize == 2
