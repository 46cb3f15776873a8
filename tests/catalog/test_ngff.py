"""catalog.ngff on a store that is not a local folder (object stores: the label image's files are byte copies,
not hard links), and CaseAttrs round trips."""
from __future__ import annotations

import numpy as np
import pytest
import zarr

from catalog.ngff import LABEL_IMAGE, LEVEL, case_ngff, write_ngff
from catalog.store_format import IMAGE, LABEL, CaseAttrs

v05 = pytest.importorskip("ome_zarr_models.v05", reason="ome-zarr-models is in the test extra: "
                                                          "pip install -e '.[test]'")

ATTRS = CaseAttrs(domain="d", case_id="c1", spacing=(2.5, 0.8, 0.8), origin=(-10.0, 20.0, 30.0),
                  labels={"0": "background", "1": "liver", "2": "tumour"}, more={"nodule": {"diameter_mm": 7.5}})


def test_case_attrs_round_trip_and_old_keys():
    attrs = ATTRS.to_attrs()
    assert attrs["spacing"] == [2.5, 0.8, 0.8] and attrs["nodule"] == {"diameter_mm": 7.5}
    assert "spacing_known" not in attrs and "label_parts" not in attrs  # written only when they say something
    back = CaseAttrs.from_attrs({**attrs, "ome": {"version": "0.5"}, "med3d_complete": {"written_at": "x"}})
    assert back == ATTRS  # the marker and the OME-Zarr metadata are not case attributes
    with pytest.raises(ValueError, match="no 'spacing'.*rebuild"):
        CaseAttrs.from_attrs({"case_id": "c1"}, "STORE/d/c1/zarr.json")


def test_write_ngff_on_a_store_without_files():
    store = zarr.storage.MemoryStore()
    case = zarr.open_group(store, path="d/c1", mode="w", zarr_format=3)
    image = np.arange(2 * 4 * 5 * 6, dtype="float16").reshape(2, 4, 5, 6)
    label = (np.arange(4 * 5 * 6) % 3).astype("uint8").reshape(4, 5, 6)
    case.create_array(IMAGE, shape=image.shape, chunks=(1, 2, 5, 6), dtype=image.dtype)[...] = image
    case.create_array(LABEL, shape=label.shape, chunks=(2, 5, 6), dtype=label.dtype)[...] = label
    write_ngff(case, ATTRS)
    model = v05.Image.from_zarr(zarr.open_group(store, path="d/c1", mode="r"))
    (level,) = model.ome_attributes.multiscales[0].datasets
    scale, translation = level.coordinateTransformations
    assert level.path == IMAGE and scale.scale == [1.0, 2.5, 0.8, 0.8]
    assert translation.translation == [0.0, 30.0, 20.0, -10.0]  # origin (x, y, z) as (z, y, x)
    assert model.labels.label_paths == [LABEL]
    props = v05.ImageLabel.from_zarr(zarr.open_group(store, path=f"d/c1/{LABEL_IMAGE}", mode="r"))
    assert [p.name for p in props.ome_attributes.image_label.properties] == ["background", "liver", "tumour"]
    copied = zarr.open_array(store, path=f"d/c1/{LABEL_IMAGE}/{LEVEL}", mode="r")
    assert np.array_equal(copied[...], label) and copied.metadata.dimension_names == ("z", "y", "x")
    assert zarr.open_group(store, path="d/c1", mode="r").attrs["ome"] == case_ngff(ATTRS)
