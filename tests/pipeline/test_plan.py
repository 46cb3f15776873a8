"""The per-domain plan is frozen in the store: adding volumes later does not silently change its spacing."""
from __future__ import annotations

import numpy as np
import zarr

from pipeline.config import Case, DomainSpec, PrepConfig
from pipeline.job import build

from helpers import write_nifti

SPEC = DomainSpec(name="toy", source_dataset="toy", modality="MR", channel_names=("MR",), labels={0: "bg", 1: "a"})


def _case(tmp_path, i, z_spacing):
    img = np.random.default_rng(i).normal(100, 10, (10, 12, 14)).astype(np.float32)
    lab = np.zeros((10, 12, 14), np.uint8)
    lab[3:6, 4:8, 4:9] = 1
    ip = write_nifti(tmp_path / f"img{i}.nii.gz", img, spacing_xyz=(1.0, 1.0, z_spacing))
    lp = write_nifti(tmp_path / f"lab{i}.nii.gz", lab, spacing_xyz=(1.0, 1.0, z_spacing))
    return Case(domain="toy", case_id=f"c{i}", scan_id=f"toy:{i}", patient_id=f"p{i}", images=(ip,), label=lp)


def test_frozen_plan_survives_added_volumes_until_replan(tmp_path):
    store = str(tmp_path / "store")
    cases = [_case(tmp_path, i, z) for i, z in enumerate((2.0, 3.0, 4.0))]
    kw = dict(workers=0, progress=False)
    first = build([(SPEC, cases)], store, PrepConfig(), log=lambda s: None, **kw)
    assert first.target_spacing["toy"] == (3.0, 1.0, 1.0)
    messages = []
    more = cases + [_case(tmp_path, 3, 5.0), _case(tmp_path, 4, 5.0)]
    second = build([(SPEC, more)], store, PrepConfig(), log=messages.append, **kw)
    assert second.target_spacing["toy"] == (3.0, 1.0, 1.0)  # the median would now be 4.0
    assert second.skipped == 3 and second.converted == 2
    assert any("frozen plan" in m for m in messages)
    assert zarr.open_group(store, path="toy", mode="r").attrs["plan"]["n_cases"] == 3
    third = build([(SPEC, more)], store, PrepConfig(), replan=True, log=lambda s: None, **kw)
    assert third.target_spacing["toy"] == (4.0, 1.0, 1.0)
    assert third.converted == 5  # a new spacing changes every case's parameters
