"""`med3d-prep build-medmnist`: a MedMNIST 3D .npz becomes a store and STORE/labels.csv. A tiny file made here (6
train / 2 val / 3 test 28³ volumes: masks, noise, one constant volume) and the real AdrenalMNIST3D file: stored
arrays are the volumes z-scored per volume (exactly, up to float32 rounding), labels.csv is the file's labels and
splits, class names, spacing 1 mm marked unknown, the fast case writer writes what write_case writes, every
damaged file is one error with nothing written, and `finetune classify` trains on the store."""

from __future__ import annotations

import json
import os
import sys
import types
from pathlib import Path

import numcodecs
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from catalog import load_catalog, load_domains
from catalog.store_format import MARKER, node_meta
from pipeline.cli import main
from pipeline.job_medmnist import build_medmnist
from pipeline.sources.medmnist import SPACING_FLAG, SPLITS, MedmnistError, class_names, flag_from_name, read_medmnist

REAL = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "real" / "medmnist"
COUNTS = {"train": 6, "val": 2, "test": 3}


def tiny_arrays(seed: int = 0) -> dict[str, np.ndarray]:
    """Per split: uint8 (N, 28, 28, 28) volumes (a 0/255 box mask, uint8 noise, and in train[2] a constant 0
    volume) and (N, 1) labels of both classes."""
    rng = np.random.default_rng(seed)
    out = {}
    for split, n in COUNTS.items():
        vols = np.zeros((n, 28, 28, 28), np.uint8)
        for i in range(n):
            if i % 2:
                vols[i] = rng.integers(0, 256, (28, 28, 28), dtype=np.uint8)
            elif not (split == "train" and i == 2):
                lo = rng.integers(2, 12, 3)
                vols[i][lo[0]:lo[0] + 9, lo[1]:lo[1] + 7, lo[2]:lo[2] + 11] = 255
        out[f"{split}_images"] = vols
        out[f"{split}_labels"] = (np.arange(n) % 2).astype(np.uint8)[:, None]
    return out


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    with open(path, "wb") as fh:  # np.savez_compressed(path) would add .npz to a name without it
        np.savez_compressed(fh, **arrays)
    return path


def stored_image(store: str, store_path: str) -> np.ndarray:
    """A case's image (Z, Y, X) decoded straight from its one Blosc chunk file (independent of the writer)."""
    meta = node_meta(store, store_path, "image", required=True)
    shape = meta["shape"]
    chunk = Path(store, store_path, "image", "c", "0", "0", "0", "0")
    if not chunk.exists():  # zarr writes no chunk that holds only the fill value
        return np.zeros(shape[1:], np.float32)
    return np.frombuffer(numcodecs.Blosc().decode(chunk.read_bytes()), "<f4").reshape(shape)[0]


def check_rule(store: str, arrays: dict[str, np.ndarray], flag: str) -> None:
    """Every stored image is its npz volume z-scored with the volume's own mean and std (float64 reference,
    float32 rounding), and value × std + mean (catalog) gives the uint8 volume back exactly."""
    cat = load_catalog(store).set_index("case_id")
    for split in SPLITS:
        vols = arrays[f"{split}_images"]
        width = max(4, len(str(max(len(arrays[f"{s}_images"]) for s in SPLITS) - 1)))
        for i, vol in enumerate(vols):
            row = cat.loc[f"{flag}_{split}_{i:0{width}d}"]
            got = stored_image(store, row["store_path"])
            assert got.dtype == np.float32 and got.shape == vol.shape
            ref = vol.astype(np.float64)
            mean, std = ref.mean(), ref.std()
            assert row["mean"][0] == pytest.approx(mean, rel=1e-12) and row["std"][0] == pytest.approx(std, rel=1e-12)
            if std == 0:
                assert not got.any()
                continue
            np.testing.assert_allclose(got, (ref - mean) / std, rtol=1e-6, atol=1e-6)
            assert np.array_equal(np.rint(got.astype(np.float64) * std + mean), ref)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("medmnist")
    arrays = tiny_arrays()
    npz = write_npz(root / "adrenalmnist3d.npz", arrays)
    lines: list[str] = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(sys.modules, "medmnist", None)  # as if not installed (it is optional): class names are indices
        result = build_medmnist(npz, root / "store", log=lines.append)
    return {"root": root, "npz": npz, "store": str(root / "store"), "arrays": arrays, "result": result,
            "lines": lines}


def test_stored_arrays_are_the_volumes_z_scored(tiny):
    check_rule(tiny["store"], tiny["arrays"], "adrenalmnist3d")
    assert tiny["result"].constant == 1 and "1 constant volume(s) stored as zeros" in tiny["result"].summary()
    assert [line.split(" volumes")[0] for line in tiny["lines"][1:]] == ["  train: 6", "  val: 2", "  test: 3"]


def test_labels_csv_holds_the_files_labels_and_splits(tiny):
    table = pd.read_csv(Path(tiny["store"]) / "labels.csv", dtype={"label": int})
    assert list(table.columns) == ["case_id", "label", "split"]
    want = pd.DataFrame([{"case_id": f"adrenalmnist3d_{s}_{i:04d}", "label": int(lab), "split": s}
                         for s in SPLITS for i, lab in enumerate(tiny["arrays"][f"{s}_labels"][:, 0])])
    pd.testing.assert_frame_equal(table, want)


def test_catalog_domain_and_attrs_mark_the_spacing_unknown(tiny):
    store = tiny["store"]
    cat = load_catalog(store)
    assert len(cat) == 11 and set(cat["status"]) == {"ok"} and not cat["has_label"].any()
    assert cat.groupby("split").size().to_dict() == COUNTS
    row = cat[cat["case_id"] == "adrenalmnist3d_val_0001"].iloc[0]
    assert row["scan_id"] == "medmnist:adrenalmnist3d:val:0001" and row["patient_id"] == row["scan_id"]
    assert row["store_path"] == "adrenalmnist3d/adrenalmnist3d_val_0001" and row["split"] == "val"
    for col in ("target_spacing", "orig_spacing"):
        assert all(list(v) == [1.0, 1.0, 1.0] for v in cat[col])
    assert set(cat["spacing_flag"]) == {SPACING_FLAG} and all(list(s) == [28, 28, 28] for s in cat["shape"])
    assert cat["source_sha256"].nunique() == 11  # the volumes' own hashes: all differ
    dom = load_domains(store).iloc[0]
    assert dom["domain"] == "adrenalmnist3d" and list(dom["labels"]) == ["0", "1"] and dom["num_classes"] == 2
    assert dom["source_dataset"] == "adrenalmnist3d.npz" and dom["modality"] == "mask"
    plan = node_meta(store, "adrenalmnist3d")["attributes"]["plan"]
    assert plan["spacing_known"] is False and plan["target_spacing"] == [1.0, 1.0, 1.0]
    assert plan["medmnist"]["sha256"] == read_medmnist(tiny["npz"]).sha256
    attrs = node_meta(store, row["store_path"])["attributes"]
    assert attrs["spacing"] == [1.0, 1.0, 1.0] and attrs["spacing_known"] is False
    assert attrs["medmnist"] == {"flag": "adrenalmnist3d", "split": "val", "index": 1, "label": 1}


def test_store_passes_info_verify_and_gives_a_recipe(tiny):
    from catalog.card import case_recipe
    from pipeline.store import open_root
    from pipeline.verify import case_damage

    store = tiny["store"]
    res = CliRunner().invoke(main, ["info", store])
    assert res.exit_code == 0, res.output
    assert "adrenalmnist3d" in res.output and "total: 11 volumes, 0 failed" in res.output
    root = open_root(store, mode="r")
    assert [case_damage(root, p) for p in load_catalog(store)["store_path"]] == [None] * 11
    recipe = case_recipe(store, "adrenalmnist3d/adrenalmnist3d_train_0000")
    assert recipe["percentiles"] == [0.0, 100.0] and recipe["dtype"] == "float32"
    assert recipe["target_spacing"] == [1.0, 1.0, 1.0] and recipe["modality"] == "mask"


def test_fast_writer_writes_what_write_case_writes(tiny, tmp_path):
    """Case train_0001 (written by the fast writer) rewritten by pipeline.store.write_case: the same files."""
    from pipeline.config import PrepConfig
    from pipeline.store import open_root, write_case

    store, path = tiny["store"], "adrenalmnist3d/adrenalmnist3d_train_0001"
    attrs = dict(node_meta(store, path)["attributes"])
    done = attrs.pop(MARKER)
    row = {k: v for k, v in done["row"].items() if k != "stored_bytes"}
    marker = {k: v for k, v in done.items() if k not in ("row", "files", "written_at")}
    image = stored_image(store, path)[None]
    cfg = PrepConfig(dtype="float32", chunks=(28, 28, 28), image_codec="lz4hc")
    other = str(tmp_path / "other")
    write_case(open_root(other), path, image, None, np.zeros((0, 4), np.int32), attrs, cfg, marker=marker, row=row)

    def files(base: str) -> dict[str, bytes]:
        top = Path(base, path)
        return {str(p.relative_to(top)): p.read_bytes() for p in sorted(top.rglob("*")) if p.is_file()}

    mine, theirs = files(store), files(other)
    assert sorted(mine) == sorted(theirs) == ["foreground/zarr.json", "image/c/0/0/0/0", "image/zarr.json",
                                              "zarr.json"]
    for name in mine:
        if name != "zarr.json":
            assert mine[name] == theirs[name], name
    a, b = json.loads(mine["zarr.json"]), json.loads(theirs["zarr.json"])
    for meta in (a, b):
        meta["attributes"][MARKER].pop("written_at")
    assert a == b


def test_class_names_come_from_medmnist_info(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "medmnist", None)  # import medmnist raises ImportError
    assert class_names("organmnist3d")[0] == tuple(str(i) for i in range(11))
    info = {"adrenalmnist3d": {"label": {"0": "normal", "1": "hyperplasia"}}}
    monkeypatch.setitem(sys.modules, "medmnist", types.SimpleNamespace(INFO=info))
    assert class_names("adrenalmnist3d") == (("normal", "hyperplasia"), "names from medmnist.INFO")
    npz = write_npz(tmp_path / "renamed.npz", tiny_arrays(1))
    result = build_medmnist(npz, tmp_path / "store", flag="adrenalmnist3d", log=lambda s: None)
    assert result.classes == ("normal", "hyperplasia") and "0 normal, 1 hyperplasia" in result.summary()
    assert list(load_domains(tmp_path / "store").iloc[0]["labels"]) == ["normal", "hyperplasia"]
    labels = pd.read_csv(tmp_path / "store" / "labels.csv")
    assert set(labels["label"]) == {0, 1}  # the file's indices: the network's class order is MedMNIST's


def test_flag_and_size_from_the_file_name():
    assert flag_from_name("/x/adrenalmnist3d.npz") == ("adrenalmnist3d", None)
    assert flag_from_name("adrenalmnist3d_64.npz") == ("adrenalmnist3d", 64)
    assert flag_from_name("OrganMNIST3D.npz") == ("organmnist3d", None)
    assert flag_from_name("pathmnist.npz") == (None, None) and flag_from_name("data.npz") == (None, None)


def _damaged(name: str, tmp: Path) -> Path:
    """One crafted file per kind of damage (``name``), written as ``tmp/adrenalmnist3d*.npz``."""
    good = tiny_arrays(2)
    path = tmp / "adrenalmnist3d.npz"
    if name == "text":
        path.write_text("<html>404 Not Found</html>")
    elif name == "truncated":
        write_npz(path, good)
        path.write_bytes(path.read_bytes()[:5000])
    elif name == "npy":
        np.save(open(path, "wb"), good["train_images"])
    elif name == "pickled":
        write_npz(path, {**good, "train_labels": np.array([[0], [1], None, [1], [0], [1]], dtype=object)})
    elif name == "size":
        path = write_npz(tmp / "adrenalmnist3d_64.npz", good)
    elif name == "unknown_name":
        path = write_npz(tmp / "mydata.npz", good)
    else:
        bad = dict(good)
        if name == "missing_key":
            del bad["val_labels"]
        elif name == "ndim":
            bad["train_images"] = good["train_images"][:, None]
        elif name == "float":
            bad["test_images"] = good["test_images"].astype(np.float32) / 255
        elif name == "out_of_range":
            bad["val_labels"] = np.array([[0], [2]], np.uint8)
        elif name == "negative":
            bad["test_labels"] = np.array([[0], [-1], [1]], np.int64)
        elif name == "count":
            bad["train_labels"] = good["train_labels"][:5]
        elif name == "multilabel":
            bad["train_labels"] = np.zeros((6, 3), np.uint8)
        elif name == "shapes":
            bad["val_images"] = np.zeros((2, 28, 28, 20), np.uint8)
        elif name == "empty":
            bad["test_images"], bad["test_labels"] = good["test_images"][:0], good["test_labels"][:0]
        write_npz(path, bad)
    return path


DAMAGE = {
    "text": "not an .npz archive", "truncated": "not an .npz archive", "npy": "not an .npz archive",
    "pickled": "train_labels cannot be read", "size": "the name says 64³ but the volumes are 28×28×28",
    "unknown_name": "cannot tell which 3D MedMNIST set", "missing_key": "no val_labels",
    "ndim": "train_images is uint8 of shape (6, 1, 28, 28, 28)", "float": "test_images is float32",
    "out_of_range": "val_labels holds [2] (rows 1), but adrenalmnist3d has 2 classes",
    "negative": "test_labels holds [-1]", "count": "train_images holds 6 volumes but train_labels 5 labels",
    "multilabel": "train_labels is uint8 of shape (6, 3)", "shapes": "volumes of different shapes",
    "empty": "test_images holds no volume",
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_file_is_one_error_and_nothing_is_written(damage, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    path = _damaged(damage, src)
    out = tmp_path / "out"
    out.mkdir()
    res = CliRunner().invoke(main, ["build-medmnist", str(path), str(out / "store")])
    assert res.exit_code == 2, res.output
    error = [line for line in res.output.splitlines() if line.startswith("Error:")]
    assert len(error) == 1 and str(path) in error[0] and DAMAGE[damage] in error[0], res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)
    assert os.listdir(out) == []  # no STORE, no half-built folder beside it


def test_an_occupied_store_is_refused_unless_built_from_the_same_file(tiny, tmp_path):
    other = tmp_path / "other"
    (other / "notes").mkdir(parents=True)
    res = CliRunner().invoke(main, ["build-medmnist", str(tiny["npz"]), str(other)])
    assert res.exit_code == 2 and "not empty (a folder holding notes)" in res.output, res.output
    assert os.listdir(other) == ["notes"]
    # a store built from another file: refused, naming it
    npz2 = write_npz(tmp_path / "vesselmnist3d.npz", tiny_arrays(3))
    res = CliRunner().invoke(main, ["build-medmnist", str(npz2), tiny["store"]])
    assert res.exit_code == 2 and "not empty (the adrenalmnist3d store built from" in res.output, res.output
    # the same file: already built, nothing rewritten
    catalog = Path(tiny["store"]) / "catalog.parquet"
    before = catalog.stat().st_mtime_ns
    res = CliRunner().invoke(main, ["build-medmnist", str(tiny["npz"]), tiny["store"]])
    assert res.exit_code == 0, res.output
    assert "already built from" in res.output and "nothing written" in res.output
    assert catalog.stat().st_mtime_ns == before


def test_an_empty_store_folder_is_used(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "medmnist", None)
    npz = write_npz(tmp_path / "fracturemnist3d.npz", tiny_arrays(4))
    (tmp_path / "store").mkdir()
    res = CliRunner().invoke(main, ["build-medmnist", str(npz), str(tmp_path / "store"), "--image-codec", "raw"])
    assert res.exit_code == 0, res.output
    assert "train: 6 volumes (0: 3, 1: 3, 2: 0)" in res.output and "3 classes: 0, 1, 2" in res.output
    assert sorted(os.listdir(tmp_path)) == ["fracturemnist3d.npz", "store"]
    check_rule(str(tmp_path / "store"), tiny_arrays(4), "fracturemnist3d")


@pytest.mark.slow  # ~9 s of CPU training and evaluation, besides importing torch
def test_finetune_classify_trains_on_the_store(tiny, tmp_path):
    from model.api import finetune

    store = tiny["store"]
    [result] = finetune("classify", store, str(tmp_path / "run"), labels=str(Path(store) / "labels.csv"),
                        shape=(28, 28, 28), steps=2, batch=2, device="cpu", workers=0, val_every=0,
                        ckpt_every=0, progress=False, log=lambda s: None)
    spec = json.loads((tmp_path / "run" / "finetune.json").read_text())
    assert spec["classes"] == [0, 1] and spec["eval_split"] == "test"
    assert spec["preprocessing"]["percentiles"] == [0.0, 100.0]
    assert (tmp_path / "run" / "checkpoint.pt").is_file()


@pytest.mark.slow  # the build and checks take ~5 s; deleting the store's ~17,000 files after it can take 25 s more
def test_real_adrenalmnist3d_round_trips(tmp_path):
    npz = REAL / "adrenalmnist3d.npz"
    if not npz.is_file():
        pytest.skip(f"real MedMNIST files not found at {REAL}")
    result = build_medmnist(npz, tmp_path / "store", log=lambda s: None)
    assert result.counts == {"train": 1188, "val": 98, "test": 298} and result.shape == (28, 28, 28)
    with np.load(npz) as z:
        arrays = {k: z[k] for k in z.files}
    check_rule(str(tmp_path / "store"), arrays, "adrenalmnist3d")
    table = pd.read_csv(tmp_path / "store" / "labels.csv")
    for split in SPLITS:
        assert table.loc[table["split"] == split, "label"].tolist() == arrays[f"{split}_labels"][:, 0].tolist()
