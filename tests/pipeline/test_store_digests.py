"""The store's bytes do not move when the build is made faster (issue 22: "byte-identical to today's store").

Real scans built in this process with the default configuration, each array's decoded values and each case's
recorded geometry and statistics hashed, against digests recorded from the build before the speed work of
issue 22's last round (forked workers, headers parsed without nibabel; the faster inflate came before and has its
own test). Covered: the real abdominal
CT (int16, stored RAS-flipped, air below -1024 HU) up-sampled to 2 x 1.5 x 1.5 mm and down-sampled to
4 x 3.5 x 5 mm with its liver mask, and the four real MSD hippocampus MR cases (a uint8 image, a float32 label)
on their planned 1 mm grid and at 0.8 mm.

A digest that differs names the array. If the change was meant (a new normalization, another resampler), the
store's format or parameters changed: record the new digests with ``python tests/pipeline/test_store_digests.py``
and say why in the commit. The digests were recorded with the numpy and SimpleITK named in ``RECORDED_WITH``; a
failure under other releases says so.
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr

from pipeline.config import Case, DomainSpec, PrepConfig
from pipeline.job import build
from pipeline.sources.msd import scan_msd

REAL = Path(__file__).resolve().parents[1] / "data" / "real"
CT = DomainSpec(name="abdomen", source_dataset="example_ct", modality="CT", channel_names=("CT",),
                labels={0: "background", 1: "liver"})
BUILDS = {  # name -> (source, target spacing (z, y, x) or None for the plan)
    "ct_up": ("ct", (2.0, 1.5, 1.5)),
    "ct_down": ("ct", (4.0, 3.5, 5.0)),
    "hippo_plan": ("msd", None),
    "hippo_08": ("msd", (0.8, 0.8, 0.8)),
}


def _domains(source: str):
    if source == "msd":
        found, _ = scan_msd(REAL / "msd")
        return found
    ct = REAL / "ct"
    case = Case(domain="abdomen", case_id="ct_sm", scan_id="test:ct_sm", patient_id="ct_sm",
                images=(str(ct / "example_ct_sm.nii.gz"),), label=str(ct / "example_ct_sm_liver.nii.gz"))
    return [(CT, [case])]


def _digest(*parts) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p if isinstance(p, bytes) else json.dumps(p, sort_keys=True).encode())
    return h.hexdigest()[:16]


def store_digests(store: str) -> dict[str, str]:
    """``domain/case/array`` -> digest of dtype, shape and values; ``domain/case/attrs`` -> digest of the grid
    and the statistics the case records."""
    out = {}
    root = zarr.open_group(store, mode="r")
    for domain in sorted(k for k, _ in root.groups()):
        for case in sorted(k for k, _ in root[domain].groups()):
            grp = root[domain][case]
            for name in sorted(k for k, _ in grp.arrays()):
                arr = np.ascontiguousarray(grp[name][...])
                out[f"{domain}/{case}/{name}"] = _digest(str(arr.dtype), list(arr.shape), arr.tobytes())
            a = grp.attrs.asdict()
            out[f"{domain}/{case}/attrs"] = _digest(
                a["spacing"], a["origin"], a["direction"], a["normalization"]["channels"])
    return out


def build_all(tmp: Path) -> dict[str, dict[str, str]]:
    got = {}
    for name, (source, target) in BUILDS.items():
        store = str(tmp / name)
        domains = _domains(source)
        res = build(domains, store, PrepConfig(), workers=0, progress=False, log=lambda s: None,
                    target_spacing={domains[0][0].name: target} if target else None)
        assert res.failed == [], res.summary()
        got[name] = store_digests(store)
    return got


RECORDED: dict[str, dict[str, str]] = {  # recorded with numpy 2.4.6, SimpleITK 2.5.7, zarr 3.1.6, numcodecs 0.16.6
    'ct_down': {
        'abdomen/ct_sm/attrs': '38b3581ce42d0b9a',
        'abdomen/ct_sm/foreground': '1ce84efd2d334dd0',
        'abdomen/ct_sm/image': 'dd1427ef3fa93ccd',
        'abdomen/ct_sm/label': '4f1eaff48d3d25c1',
    },
    'ct_up': {
        'abdomen/ct_sm/attrs': '8651d18ab1843741',
        'abdomen/ct_sm/foreground': '62c9a39cf5e8571c',
        'abdomen/ct_sm/image': '8aa46557d56261af',
        'abdomen/ct_sm/label': '6c2464feec7d72d9',
    },
    'hippo_08': {
        'hippocampus/hippocampus_001/attrs': 'ea5be7227cc96004',
        'hippocampus/hippocampus_001/foreground': 'd48a80a67d82c283',
        'hippocampus/hippocampus_001/image': '8fd6f3ab786d23c1',
        'hippocampus/hippocampus_001/label': 'ac22181d250f7ad3',
        'hippocampus/hippocampus_003/attrs': '8367ec7a7b145c85',
        'hippocampus/hippocampus_003/foreground': '3e0eaf64c55f7496',
        'hippocampus/hippocampus_003/image': 'e632a40a1004618f',
        'hippocampus/hippocampus_003/label': 'f1f00139f7b89a1f',
        'hippocampus/hippocampus_004/attrs': 'b198cf1bf205301a',
        'hippocampus/hippocampus_004/foreground': '763f3daa75ee20ec',
        'hippocampus/hippocampus_004/image': '720adb8c62192c40',
        'hippocampus/hippocampus_004/label': 'abdbd587385b2b36',
        'hippocampus/hippocampus_006/attrs': '5a8d51a73f458dea',
        'hippocampus/hippocampus_006/foreground': '7f541eadcbdc3dee',
        'hippocampus/hippocampus_006/image': 'fd8fd99d651d9b10',
        'hippocampus/hippocampus_006/label': '9ccde42ebcbf4b61',
    },
    'hippo_plan': {
        'hippocampus/hippocampus_001/attrs': '0a0cf607719691c0',
        'hippocampus/hippocampus_001/foreground': 'fd6d922b79405205',
        'hippocampus/hippocampus_001/image': '9156355adff26c82',
        'hippocampus/hippocampus_001/label': '27158b948f371e5b',
        'hippocampus/hippocampus_003/attrs': 'ca3d2f7439f27941',
        'hippocampus/hippocampus_003/foreground': 'b1e4a68106a5875f',
        'hippocampus/hippocampus_003/image': 'ad84a423b05fcfc6',
        'hippocampus/hippocampus_003/label': 'dbb94ec56654ba19',
        'hippocampus/hippocampus_004/attrs': '23b16e95666453b0',
        'hippocampus/hippocampus_004/foreground': '15dbd53de1f18581',
        'hippocampus/hippocampus_004/image': '6e10234cef592797',
        'hippocampus/hippocampus_004/label': 'da22ba304470002f',
        'hippocampus/hippocampus_006/attrs': '16accff2ccfb1a1e',
        'hippocampus/hippocampus_006/foreground': '3a099ccc84e5fecb',
        'hippocampus/hippocampus_006/image': 'a48e1fe18982be52',
        'hippocampus/hippocampus_006/label': 'e56f18c59b3ee96f',
    },
}
RECORDED_WITH = {"numpy": "2.4.6", "SimpleITK": "2.5.7"}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return build_all(tmp_path_factory.mktemp("digests"))


@pytest.mark.parametrize("name", list(BUILDS))
def test_store_bytes_equal_the_recorded_build(built, name):
    got, want = built[name], RECORDED[name]
    assert sorted(got) == sorted(want)
    assert len(got) >= 4  # image, label, foreground samples, attrs of at least one case
    moved = [k for k in want if got[k] != want[k]]
    assert not moved, f"these arrays or attrs of the {name} build changed: {moved}{_versions_note()}"


def _versions_note() -> str:
    from importlib.metadata import version

    now = {pkg: version(pkg) for pkg in RECORDED_WITH}
    if now == RECORDED_WITH:
        return ""
    return f" (recorded with {RECORDED_WITH}, installed {now}: a new release may move the last bits)"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="workers are forked on Linux only")
def test_forked_cluster_workers_write_the_same_bytes(tmp_path, monkeypatch):
    """The build as the command runs it: a 2-worker local cluster whose workers are forked."""
    from pipeline.executor import worker_start_method

    monkeypatch.delenv("MED3D_WORKER_START", raising=False)
    assert worker_start_method() == "fork"
    store = str(tmp_path / "cluster")
    res = build(_domains("msd"), store, PrepConfig(), workers=2, progress=False, log=lambda s: None)
    assert res.failed == [] and res.converted == 4, res.summary()
    assert store_digests(store) == RECORDED["hippo_plan"]


if __name__ == "__main__":  # print the digests of the current build, to record a meant change
    import pprint
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        pprint.pprint(build_all(Path(tmp)), width=120, stream=sys.stdout)
