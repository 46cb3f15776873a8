"""OME-Zarr (NGFF 0.5, zarr v3) metadata on every case group, so OME-Zarr readers place a case in millimetres.

A case group (``STORE/<domain>/<case>``, layout in :mod:`catalog.store_format`) is an NGFF *image*: its
attributes' ``ome.multiscales`` has one level whose dataset path is our existing ``image`` array (NGFF lets the
path name any array of the group, so no ``0`` array is needed and nothing is moved), axes ``c`` (channel) and
``z, y, x`` (space, millimeter), ``scale`` = ``[1, *spacing]`` and ``translation`` = ``[0, *origin (z, y, x)]``.
NGFF 0.5 asks that the array's ``dimension_names`` equal the axes' names: builds write them; for older stores
:func:`write_ngff` rewrites the image's ``zarr.json`` (metadata only).

NGFF keeps label images in a ``labels`` group inside the image: ``labels/label`` is a multiscale group with
``image-label`` metadata (one property per class, named as the store's labels) whose one level ``0`` holds the
``label`` array's chunk files unchanged: hard links in a local store (no byte more on disk), byte copies on
object stores (a label compresses to ~1% of its case). No chunk is decoded or re-encoded. The project's own
readers use ``label``; ``labels/`` is for OME-Zarr viewers only.

NGFF 0.5 has no rotation: the stored grid is LPS-oriented (``direction`` identity for axis-aligned scans), which
``scale`` and ``translation`` place exactly; an oblique scan's residual rotation stays in our own ``direction``.

>>> write_ngff(zarr.open_group("data/store/liver/liver_7"), CaseAttrs.read("data/store", "liver/liver_7"))
"""
from __future__ import annotations

import json
import os
from typing import Any

import zarr

from .store_format import IMAGE, LABEL, META_FILE, CaseAttrs, group_meta, local_folder, meta_key

__all__ = ["LABEL_IMAGE", "NGFF_VERSION", "case_ngff", "label_image_ngff", "write_label_image", "write_ngff"]

NGFF_VERSION = "0.5"
LABELS_GROUP = "labels"
LABEL_IMAGE = f"{LABELS_GROUP}/{LABEL}"
"""The NGFF label image of a case, relative to the case group."""
LEVEL = "0"
"""The one resolution level of the label image (NGFF's name for a full-resolution array)."""
_SPACE = ("z", "y", "x")


def _axes(channel: bool) -> list[dict[str, str]]:
    space = [{"name": a, "type": "space", "unit": "millimeter"} for a in _SPACE]
    return ([{"name": "c", "type": "channel"}] if channel else []) + space


def _level(path: str, attrs: CaseAttrs, channel: bool) -> dict[str, Any]:
    origin_zyx = [float(v) for v in reversed(attrs.origin)]
    scale = [float(s) for s in attrs.spacing]
    lead = [1.0] if channel else []
    return {"path": path, "coordinateTransformations": [
        {"type": "scale", "scale": lead + scale},
        {"type": "translation", "translation": [0.0] * len(lead) + origin_zyx},
    ]}


def case_ngff(attrs: CaseAttrs) -> dict[str, Any]:
    """The ``ome`` attribute of a case group: an NGFF image whose one level is the ``image`` array."""
    return {"version": NGFF_VERSION, "multiscales": [{
        "name": attrs.case_id or IMAGE, "axes": _axes(channel=True), "datasets": [_level(IMAGE, attrs, True)],
    }]}


def label_image_ngff(attrs: CaseAttrs) -> dict[str, Any]:
    """The ``ome`` attribute of the case's NGFF label image group (``labels/label``)."""
    props = [{"label-value": int(k), "name": str(v)} for k, v in sorted(attrs.labels.items(), key=lambda i: int(i[0]))
             if str(k).lstrip("-").isdigit()]
    return {"version": NGFF_VERSION,
            "multiscales": [{"name": LABEL, "axes": _axes(channel=False), "datasets": [_level(LEVEL, attrs, False)]}],
            "image-label": {"properties": props, "source": {"image": "../../"}}}


def write_ngff(case: zarr.Group, attrs: CaseAttrs) -> None:
    """Add OME-Zarr metadata to the written case group ``case`` (any zarr v3 store): :func:`write_label_image`,
    then the case group's ``ome`` attribute. Safe to run again; no chunk is re-encoded."""
    write_label_image(case, attrs)
    case.update_attributes({"ome": case_ngff(attrs)})


def write_label_image(case: zarr.Group, attrs: CaseAttrs) -> None:
    """The array side of a case's OME-Zarr metadata: the image's and the label's dimension names and the label
    image (``labels/label/0``: the label's files linked or copied). The build calls it before it writes the case
    group's attributes (``ome`` = :func:`case_ngff` among them) in one write."""
    store, base = case.store, case.path
    _set_dimension_names(store, f"{base}/{IMAGE}", ["c", *_SPACE])
    has_label = _get(store, f"{base}/{meta_key(LABEL)}") is not None
    if has_label:
        _set_dimension_names(store, f"{base}/{LABEL}", list(_SPACE))
        _copy_array(case, LABEL, f"{LABEL_IMAGE}/{LEVEL}")
        _put_json(store, f"{base}/{meta_key(LABELS_GROUP)}",
                  group_meta({"ome": {"version": NGFF_VERSION, "labels": [LABEL]}}))
        _put_json(store, f"{base}/{meta_key(LABEL_IMAGE)}", group_meta({"ome": label_image_ngff(attrs)}))


def _get(store: Any, key: str) -> bytes | None:
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.sync import sync

    buf = sync(store.get(key, default_buffer_prototype()))
    return None if buf is None else buf.to_bytes()


def _put(store: Any, key: str, data: bytes) -> None:
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.sync import sync

    sync(store.set(key, default_buffer_prototype().buffer.from_bytes(data)))


def _put_json(store: Any, key: str, value: dict[str, Any]) -> None:
    _put(store, key, json.dumps(value, indent=2).encode())


def _set_dimension_names(store: Any, array: str, names: list[str]) -> None:
    """Rewrite an array's metadata with ``dimension_names`` (its chunks are untouched)."""
    key = f"{array}/{META_FILE}"
    raw = _get(store, key)
    if raw is None:
        raise ValueError(f"{array}: no array metadata ({META_FILE}): the case is not complete; rebuild it")
    meta = json.loads(raw)
    if meta.get("dimension_names") != names:
        meta["dimension_names"] = names
        _put_json(store, key, meta)


def _copy_array(case: zarr.Group, src: str, dst: str) -> None:
    """Every file of array ``src`` of ``case`` at ``dst``, as it is: hard links in a local store (a copy where
    the file system has none), byte copies elsewhere."""
    from zarr.core.sync import sync

    store, base = case.store, case.path
    folder = local_folder(case)
    if folder is not None:
        _link_tree(os.path.join(folder, src), os.path.join(folder, *dst.split("/")))
        return

    async def keys() -> list[str]:
        return [k async for k in store.list_prefix(f"{base}/{src}/")]

    for key in sync(keys()):
        data = _get(store, key)
        if data is not None:
            _put(store, f"{base}/{dst}/{key.removeprefix(f'{base}/{src}/')}", data)


def _link_tree(src: str, dst: str) -> None:
    import shutil

    for top, _, files in os.walk(src):
        out = os.path.join(dst, os.path.relpath(top, src))
        os.makedirs(out, exist_ok=True)
        for name in files:
            target = os.path.join(out, name)
            if os.path.lexists(target):
                os.remove(target)
            try:
                os.link(os.path.join(top, name), target)
            except OSError:  # no hard links here (another device, a file system without them)
                shutil.copyfile(os.path.join(top, name), target)
