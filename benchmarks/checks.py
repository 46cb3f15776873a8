"""What the input integrity checks (volume/integrity.py) cost against a case's conversion time.

    python benchmarks/checks.py [--data data/bench] [--repeat 3]

On the 8 full-size CT cases of ``med3d-prep sample --size bench`` (512×512×120 int16 .nii.gz + label), one
thread, as a dask worker runs them, interleaved rounds (medians per case). Columns:

- conversion: ``convert_case`` (read, reorient, statistics, resample, normalize, write), checks included;
- header checks: ``check_case_headers`` for image and label, run twice per case (planning and conversion);
- verified read − ITK read: ``geometry.read_channels`` of image and label (one decompression by zlib with every
  gzip member's CRC-32 and length checked, NaN/Inf counted for float data) minus ``sitk.ReadImage`` of both,
  which is what the read cost before the checks;
- checks = header checks + that difference, as a share of the conversion;
- separate CRC pass: what the rejected design, a streaming zlib pass in 1 MiB blocks before ITK's own read,
  would add instead.

Prints a markdown table.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prep import _ensure_data  # noqa: E402  (benchmarks/prep.py, beside this script: the bench CTs)




def _timed(fn, *args) -> float:
    t = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("data/bench"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=3, help="interleaved rounds; medians shown")
    args = ap.parse_args()

    import SimpleITK as sitk

    from volume import geometry, integrity
    from pipeline.config import PrepConfig
    from pipeline.convert import case_params_hash, check_case_headers, convert_case
    from pipeline.executor import single_threaded
    from pipeline.job import plan_target_spacing, read_case_header
    from pipeline.sources.msd import scan_msd

    msd = _ensure_data(args.data, args.seed)
    ((spec, cases),), _ = scan_msd(msd, ["Task03_Liver"])
    cases = [c for c in cases if c.label]
    cfg = PrepConfig()
    target = plan_target_spacing([read_case_header(c) for c in cases])
    tmp = Path(tempfile.mkdtemp(prefix="med3d-checks-", dir=args.data))
    names = ["conv", "hdr", "ours", "itk", "sep"]
    t = {c.case_id: {k: [] for k in names} for c in cases}
    try:
        with single_threaded():
            for r in range(args.repeat):
                for case in cases:
                    row = t[case.case_id]
                    phash = case_params_hash(case, cfg, target, spec)
                    row["conv"].append(_timed(convert_case, case, spec, target, cfg, str(tmp / f"s{r}"), phash))
                    row["hdr"].append(2 * _timed(check_case_headers, case, cfg.max_voxels))
                    row["itk"].append(_timed(lambda: (sitk.ReadImage(case.images[0]), sitk.ReadImage(case.label))))
                    row["ours"].append(_timed(lambda: (geometry.read_channels(case.images[0]),
                                                       geometry.read_single(case.label))))
                    row["sep"].append(_timed(lambda: (integrity.verify_gzip(case.images[0]),
                                                      integrity.verify_gzip(case.label))))
        flt = np.random.default_rng(0).normal(0, 100, (120, 512, 512)).astype(np.float32)
        nan_s = min(_timed(integrity.count_nonfinite, flt) for _ in range(3))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    med = {cid: {k: float(np.median(v)) for k, v in row.items()} for cid, row in t.items()}
    hdr0 = read_case_header(cases[0])
    print(f"\n{len(cases)} CT cases, source (z, y, x) {hdr0.size_zyx} int16 .nii.gz + uint8 label, target spacing "
          f"{target} mm, one thread; median of {args.repeat} interleaved rounds\n")
    print("| case | conversion (s) | header checks (ms) | verified read − ITK read (ms) | checks / conversion "
          "| separate CRC pass instead: pass ms (header checks + pass, share of conversion) |")
    print("|---|---:|---:|---:|---:|---:|")
    shares, sep_shares = [], []
    for cid, m in med.items():
        checks = m["hdr"] + (m["ours"] - m["itk"])
        shares.append(checks / m["conv"])
        sep_shares.append((m["hdr"] + m["sep"]) / m["conv"])
        print(f"| {cid} | {m['conv']:.2f} | {1e3 * m['hdr']:.1f} | {1e3 * (m['ours'] - m['itk']):+.0f} | "
              f"{100 * shares[-1]:.1f}% | {1e3 * m['sep']:.0f} ({100 * sep_shares[-1]:.1f}%) |")
    print(f"| **median** | {np.median([m['conv'] for m in med.values()]):.2f} | "
          f"{1e3 * np.median([m['hdr'] for m in med.values()]):.1f} | "
          f"{1e3 * np.median([m['ours'] - m['itk'] for m in med.values()]):+.0f} | "
          f"**{100 * np.median(shares):.1f}%** | {100 * np.median(sep_shares):.1f}% |")
    print(f"\nNaN/Inf count of a float32 volume of the same size (31 M voxels, not needed for these int16 CTs): "
          f"{1e3 * nan_s:.0f} ms")


if __name__ == "__main__":
    main()
