"""The per-case memory estimate that caps dask concurrency is not below what a conversion really takes."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np

from pipeline.config import Case
from pipeline.job import estimate_memory, read_case_header

from helpers import write_nifti

_CHILD = textwrap.dedent("""
    import json, sys
    import numpy as np, SimpleITK as sitk, zarr
    from pipeline.config import Case, DomainSpec, PrepConfig
    from pipeline.convert import convert_case, case_params_hash
    from pipeline.job import read_case_header
    sitk.ProcessObject_SetGlobalDefaultNumberOfThreads(1)
    img, lab, store = sys.argv[1:4]
    spec = DomainSpec(name="ct", source_dataset="ct", modality="CT", channel_names=("CT",), labels={0: "bg", 1: "o"})
    case = Case(domain="ct", case_id="c", scan_id="s", patient_id="p", images=(img,), label=lab)
    def hwm():  # this process's own peak RSS: ru_maxrss would start at the parent's (kept across exec)
        with open("/proc/self/status") as fh:
            return next(int(ln.split()[1]) * 1024 for ln in fh if ln.startswith("VmHWM:"))
    read_case_header(case)
    base = hwm()
    target = (1.5, 0.6, 0.6)
    convert_case(case, spec, target, PrepConfig(), store, case_params_hash(case, PrepConfig(), target, spec))
    peak = hwm()
    print(json.dumps({"base": base, "peak": peak}))
""")


def test_estimate_covers_measured_peak(tmp_path):
    rng = np.random.default_rng(0)
    shape = (60, 256, 256)  # (z, y, x), 3.9 M voxels, resampled to ~2.5x more
    img = rng.integers(-1000, 1500, size=shape).astype(np.int16)
    lab = np.zeros(shape, np.uint8)
    lab[20:40, 100:150, 100:160] = 1
    ip = write_nifti(tmp_path / "img.nii.gz", img, spacing_xyz=(0.8, 0.8, 2.5))
    lp = write_nifti(tmp_path / "lab.nii.gz", lab, spacing_xyz=(0.8, 0.8, 2.5))
    out = subprocess.run([sys.executable, "-c", _CHILD, ip, lp, str(tmp_path / "store")],
                         capture_output=True, text=True, check=True)
    m = json.loads(out.stdout.strip().splitlines()[-1])
    used = m["peak"] - m["base"]
    case = Case(domain="ct", case_id="c", scan_id="s", patient_id="p", images=(ip,), label=lp)
    est = estimate_memory(read_case_header(case), (1.5, 0.6, 0.6))
    assert used > 50 * 2**20  # the conversion really allocates (the test measures something)
    assert est >= used, f"estimate {est / 2**20:.0f} MiB < measured {used / 2**20:.0f} MiB"
    assert est < 6 * used + 200 * 2**20  # and is not absurdly conservative
