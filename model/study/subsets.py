"""Which labelled patients each cell of a study trains on: pure functions of the pool, the fractions and the seeds.

- :func:`holdout`: the fixed test and val patients of a study (``--holdout TEST,VAL``), drawn once from a
  generator of its own, so every cell is measured on the same cases whatever its seed.
- :func:`nested_subsets`: per seed, one random order of the training patients (per class for classify); the subset
  of fraction ``f`` is the first ``round(f * n)`` of each order, so a smaller fraction's subset lies inside every
  larger one (a 10 % run's patients are in the 25 % run's). Stratified by class when the patients have labels.

Patients, not cases: all scans of one patient are in one subset (the catalog's ``patient_id``).

>>> subsets = nested_subsets({"a": 0, "b": 0, "c": 1, "d": 1}, [0.5, 1.0], [0])
>>> len(subsets[(0.5, 0)]), set(subsets[(0.5, 0)]) <= set(subsets[(1.0, 0)])
(2, True)
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np

__all__ = ["SubsetError", "holdout", "nested_subsets", "subset_size"]

HOLDOUT_SEED = 20190401
"""Seed of the holdout draw (the paper's arXiv month): fixed, so a study's test split never depends on its seeds."""


class SubsetError(ValueError):
    """The grid asks for a subset that cannot be drawn (a fraction leaving a class without a training patient)."""


def _strata(patients: Mapping[str, Hashable]) -> dict[Hashable, list[str]]:
    """Patients grouped by their class (one stratum when they have none), each group sorted."""
    groups: dict[Hashable, list[str]] = {}
    for p in sorted(patients):
        groups.setdefault(patients[p], []).append(p)
    return dict(sorted(groups.items(), key=lambda kv: str(kv[0])))


def subset_size(fraction: float, n: int) -> int:
    """Patients a fraction takes of ``n``: ``round(fraction * n)`` (half up), at most ``n``."""
    return min(n, int(np.floor(fraction * n + 0.5)))


def holdout(patients: Mapping[str, Hashable], n_test: int, n_val: int) -> dict[str, str]:
    """``{patient: "test" | "val" | "train"}``: ``n_test`` test and ``n_val`` val patients drawn without
    replacement (in proportion to each class when the patients have classes), the rest train."""
    strata = _strata(patients)
    total = len(patients)
    if n_test < 0 or n_val < 0 or n_test + n_val >= total:
        raise SubsetError(f"--holdout {n_test},{n_val}: the pool has {total} labelled patients; leave some to train")
    rng = np.random.default_rng(HOLDOUT_SEED)
    out = {p: "train" for p in patients}
    for split, n in (("test", n_test), ("val", n_val)):
        left = {c: [p for p in ps if out[p] == "train"] for c, ps in strata.items()}
        pool = sum(len(ps) for ps in left.values())
        quotas = _quotas({c: len(ps) for c, ps in left.items()}, n, pool)
        for c, ps in left.items():
            for p in rng.permutation(ps)[: quotas[c]]:
                out[str(p)] = split
    return out


def _quotas(sizes: dict[Hashable, int], n: int, pool: int) -> dict[Hashable, int]:
    """``n`` split across strata in proportion to their sizes (largest remainders), never above a stratum's
    size."""
    if pool == 0:
        return {c: 0 for c in sizes}
    exact = {c: n * s / pool for c, s in sizes.items()}
    quotas = {c: int(np.floor(v)) for c, v in exact.items()}
    for c in sorted(exact, key=lambda c: (-(exact[c] - quotas[c]), str(c)))[: n - sum(quotas.values())]:
        quotas[c] += 1
    return {c: min(q, sizes[c]) for c, q in quotas.items()}


def nested_subsets(patients: Mapping[str, Hashable], fractions: Sequence[float], seeds: Sequence[int]
                   ) -> dict[tuple[float, int], list[str]]:
    """``{(fraction, seed): sorted patients}`` of the training pool ``patients`` (``{patient: class}``; give one
    class for all when there is none). Per seed one order per class; each fraction takes ``round(f * n_c)`` of
    class ``c``'s order. :class:`SubsetError` when a fraction gives some class no patient."""
    strata = _strata(patients)
    out: dict[tuple[float, int], list[str]] = {}
    for seed in seeds:
        rng = np.random.default_rng([HOLDOUT_SEED, int(seed)])
        orders = {c: [str(p) for p in rng.permutation(ps)] for c, ps in strata.items()}
        for f in fractions:
            chosen: list[str] = []
            for c, order in orders.items():
                k = subset_size(f, len(order))
                if k == 0:
                    what = f"class {c!r} ({len(order)} training patients)" if len(strata) > 1 else \
                        f"the {len(order)} training patients"
                    raise SubsetError(f"fraction {f:g} takes no patient of {what}; the smallest fraction that "
                                      f"keeps one is {0.5 / len(order):.3g}")
                chosen += order[:k]
            out[(float(f), int(seed))] = sorted(chosen)
    return out
