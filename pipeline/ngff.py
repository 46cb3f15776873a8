"""``med3d-prep ngff STORE``: OME-Zarr (NGFF 0.5) metadata added to a store built before builds wrote it.

Every complete case (its completion marker there) gets what :func:`catalog.ngff.write_ngff` writes: the image's
and label's ``dimension_names`` (their ``zarr.json`` rewritten, metadata only), the label image ``labels/label``
(the label's chunk files hard-linked, or copied on object stores) and the case group's ``ome`` attribute. No
chunk is decoded or rewritten; the completion marker keeps its parameters and sources, so a re-run of the
build still skips the case, and records the new files' sizes, so ``--verify`` finds the case intact. Cases that already carry the same metadata are left alone, so running it again writes nothing.
"""
from __future__ import annotations

from collections.abc import Callable

from catalog import load_catalog
from catalog.ngff import LABEL_IMAGE, case_ngff, write_ngff
from catalog.store_format import LABEL, MARKER, CaseAttrs, store_join

from .store import case_files, case_marker, open_root

__all__ = ["add_ngff"]


def add_ngff(store: str, *, storage_options: dict | None = None, log: Callable[[str], None] = print) -> int:
    """Add OME-Zarr metadata to every complete case of ``store`` that lacks it; returns how many were updated."""
    cat = load_catalog(store)
    root = open_root(store, storage_options=storage_options)
    done, damaged = 0, []
    for path in cat.loc[cat["status"] == "ok", "store_path"]:
        marker = case_marker(root, path)
        if not marker:
            continue  # never finished: the next build rewrites it (with the metadata)
        group = root[path]
        try:
            attrs = CaseAttrs.from_attrs(group.attrs.asdict(), store_join(store, path))
        except ValueError as exc:  # one damaged case is said and left as it is; the others go on
            log(str(exc))
            damaged.append(path)
            continue
        has_label = LABEL in group.array_keys()
        if group.attrs.get("ome") == case_ngff(attrs) and (not has_label or LABEL_IMAGE.split("/")[0] in group):
            continue
        write_ngff(group, attrs)
        files = case_files(group)
        if "files" in marker and files is not None:  # --verify compares the files' sizes with the marker's
            group.attrs[MARKER] = {**marker, "files": files}
        done += 1
    log(f"{store}: OME-Zarr metadata added to {done} case(s), "
        f"{int((cat['status'] == 'ok').sum()) - done - len(damaged)} already had it or were not complete")
    if damaged:
        raise ValueError(f"{store}: {len(damaged)} damaged case(s) left without OME-Zarr metadata: "
                         f"{', '.join(damaged[:5])}")
    return done
