"""Cost as the store grows (#22 item 3): the catalog and ``info`` on 100,000 cases, the loader's start-up on 10,000.

    python benchmarks/scale_catalog.py [--work data/scale_catalog] [--catalog-cases 100000] [--store-cases 10000]

A real store is built once from the four hippocampus cases that ship with the tests; then

- **catalog**: its catalog rows are repeated (new case ids, scan ids, store paths, 8 domains, splits 80/10/10)
  to ``--catalog-cases`` rows in a store of its own (the catalog and domains tables only): timed are
  ``med3d-prep info`` as a whole command (interpreter start-up and imports included), and in one process:
  opening the catalog, selecting one domain, selecting one split;
- **loader start-up**: a store of ``--store-cases`` real cases (each a copy of a built case's folder, so every
  case has its arrays and completion marker, as after a build): ``StoreIndex.from_store`` (the catalog, one
  marker read per case) and the first batch of ``PretrainStream``.

Goals from the issue: catalog open, domain query and split under 1 s at 100,000 cases; loader start-up under 5 s
at 10,000. Prints a markdown table (median of ``--repeat`` runs) with the load average.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from catalog.store_format import meta_path  # noqa: E402

HIPPO = ROOT / "tests" / "data" / "real" / "msd"
DOMAINS = ["brain", "hippocampus", "prostate", "lung", "pancreas", "hepatic_vessel", "spleen", "colon"]


def base_store(work: Path) -> Path:
    store = work / "base"
    if not (store / "catalog.parquet").is_file():
        subprocess.run([sys.executable, "-m", "pipeline.cli", "build-3dseg8", str(HIPPO), str(store), "--tasks",
                        "Task04_Hippocampus", "--workers", "0", "--no-progress"], check=True, cwd=ROOT)
    return store


def grown_catalog(base: Path, n: int, with_domains: bool):
    """The base catalog's rows repeated to ``n`` rows with unique ids, spread over 8 domains (``with_domains``)
    or kept in the base's domain, splits 80/10/10."""
    import pandas as pd

    from catalog.io import load_catalog

    cat = load_catalog(str(base))
    cat = cat[cat["status"] == "ok"].reset_index(drop=True)
    rows = cat.iloc[np.arange(n) % len(cat)].reset_index(drop=True)
    ids = [f"case_{i:06d}" for i in range(n)]
    rows["case_id"], rows["scan_id"], rows["patient_id"] = ids, [f"scan_{i:06d}" for i in range(n)], ids
    domain = rows["domain"].iloc[0]
    if with_domains:
        rows["domain"] = [DOMAINS[i % len(DOMAINS)] for i in range(n)]
    rows["store_path"] = [f"{d}/{c}" for d, c in zip(rows["domain"], ids)]
    rows["split"] = pd.Series(np.where(np.arange(n) % 10 < 8, "train", np.where(np.arange(n) % 10 == 8, "val",
                                                                                "test")))
    return rows, domain


def catalog_store(work: Path, base: Path, n: int) -> Path:
    import pandas as pd

    from catalog.io import load_domains, save_catalog, save_domains

    store = work / f"catalog_{n}"
    if not (store / "catalog.parquet").is_file():
        store.mkdir(parents=True, exist_ok=True)
        shutil.copy(meta_path(base), meta_path(store))
        rows, _ = grown_catalog(base, n, with_domains=True)
        doms = load_domains(str(base))
        save_domains(str(store), pd.concat([doms.assign(domain=d) for d in DOMAINS], ignore_index=True))
        save_catalog(str(store), rows)
    return store


def cases_store(work: Path, base: Path, n: int) -> Path:
    from catalog.io import load_catalog, load_domains, save_catalog, save_domains

    store = work / f"cases_{n}"
    if (store / "catalog.parquet").is_file():
        return store
    rows, domain = grown_catalog(base, n, with_domains=False)
    store.mkdir(parents=True, exist_ok=True)
    shutil.copy(meta_path(base), meta_path(store))
    (store / domain).mkdir(exist_ok=True)
    shutil.copy(meta_path(base, domain), meta_path(store, domain))
    sources = [base / p for p in load_catalog(str(base))["store_path"]]
    t0 = time.perf_counter()
    for i, path in enumerate(rows["store_path"]):
        shutil.copytree(sources[i % len(sources)], store / path, copy_function=os.link)
        if i % 2000 == 1999:
            print(f"  {i + 1} of {n} cases copied ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
    save_domains(str(store), load_domains(str(base)))
    save_catalog(str(store), rows)
    return store


def timed(fn, repeat: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=ROOT / "data" / "scale_catalog")
    ap.add_argument("--catalog-cases", type=int, default=100_000)
    ap.add_argument("--store-cases", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    from catalog.io import load_catalog
    from catalog.queries import select

    base = base_store(args.work)
    big = catalog_store(args.work, base, args.catalog_cases)
    table = []
    info_cmd = [sys.executable, "-m", "pipeline.cli", "info", str(big)]
    t, _ = timed(lambda: subprocess.run(info_cmd, check=True, capture_output=True, cwd=ROOT), args.repeat)
    table.append((f"`med3d-prep info` (whole command: interpreter, imports, table), {args.catalog_cases:,} cases",
                  t, None))
    from pipeline.info import store_summary

    t, _ = timed(lambda: store_summary(str(big)), args.repeat)
    table.append(("`info`'s table in one process (`pipeline.info.store_summary`)", t, 1.0))
    t, cat = timed(lambda: load_catalog(str(big)), args.repeat)
    table.append((f"open the catalog, {len(cat):,} rows", t, 1.0))
    t, dom = timed(lambda: select(cat, domain="spleen"), args.repeat)
    table.append((f"select one domain ({len(dom):,} rows)", t, 1.0))
    t, spl = timed(lambda: select(cat, split="val"), args.repeat)
    table.append((f"select one split ({len(spl):,} rows)", t, 1.0))

    import torch

    from model.data.patches import PatchConfig, PretrainStream, StoreIndex

    torch.set_num_threads(1)
    store = cases_store(args.work, base, args.store_cases)

    def start():
        index = StoreIndex.from_store(store, split="train")
        batch = PretrainStream(store, index, PatchConfig(patch=(32, 32, 32), batch=2)).batch(0)
        return index, batch

    t, (index, batch) = timed(start, args.repeat)
    n = sum(len(c) for c in index.cases.values())
    table.append((f"loader start-up: index of {n:,} train cases + first batch", t, 5.0))
    print(f"\n{os.cpu_count()} cores, load average {', '.join(f'{v:.1f}' for v in os.getloadavg())}; median of "
          f"{args.repeat}\n")
    print("| what | seconds | goal |\n|---|---|---|")
    for what, sec, goal in table:
        verdict = "-" if goal is None else f"< {goal:g} s {'met' if sec < goal else 'MISSED'}"
        print(f"| {what} | {sec:.2f} | {verdict} |")


if __name__ == "__main__":
    main()
