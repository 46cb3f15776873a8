"""The card that travels with exported weights: ``OUT.json`` beside ``OUT.pth`` says how the encoder's data was
preprocessed, so a new dataset can be built the same way (``med3d-prep build-* --like OUT.json``) and a
fine-tuning store that was not can be caught (:func:`card_mismatches`).

A card is plain JSON (torch-free, read by both halves)::

    {"format": "med3d-card", "format_version": 1, "med3d_version": "0.1.0",
     "kind": "pretrain" | "finetune", "weights": "OUT.pth", "checkpoint": ".../checkpoint.pt", "step": 1000,
     "architecture": {"encoder": "resnet10", "depth": 10, "shortcut": "B", "stages": [...]},
     "axes": ["z", "y", "x"], "spacing_unit": "mm", "orientation": "LPS",
     "domains": {"hippocampus": {"store": ..., "modality": "MR", "target_spacing": [z, y, x],
                                 "percentiles": [0.5, 99.5], "ct_window": null, "air_hu": -1024.0,
                                 "dtype": "float16", "image_interpolation": "linear",
                                 "intensity_rule": "clip to ... then z-score ...",
                                 "cases": {"ok": 4, "train": 3, "val": 1, ..., "trained_on": 3}}},
     "config": {... the run's config ...}, "metrics": {... the checkpoint's summary ...}}

A domain entry holds the *recipe* of :func:`case_recipe` (what ``volume.preprocess`` replays for one scan)
plus where it came from. Spacings are (z, y, x) mm on the stored grid, which is reoriented to LPS.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .atomic import write_atomic
from .io import load_catalog, load_domains
from .names import unsafe_name
from .safetensors_header import embedded_card, has_embedded_card
from .store_format import IMAGE, CaseAttrs, node_meta
from .values import MAX_SPACING_MM, MIN_SPACING_MM, finite_number, read_json, show

__all__ = ["AXES", "CARD_FORMAT", "CARD_VERSION", "ORIENTATION", "CardError", "card_mismatches", "card_path",
           "case_recipe", "find_card", "intensity_rule", "make_card", "mismatch_warning", "read_card",
           "recipe_differences", "recipe_problem", "store_domains", "write_card"]

CARD_FORMAT = "med3d-card"
CARD_VERSION = 1
AXES = ("z", "y", "x")
ORIENTATION = "LPS"
"""Stored grids are reoriented to LPS (axis permutation and flips; volume.geometry.CANONICAL)."""
SPACING_RTOL = 1e-3
"""Spacings closer than this (relative) count as equal: float noise of a median, not another grid."""

_RECIPE_KEYS = ("target_spacing", "modality", "percentiles", "ct_window", "air_hu", "dtype", "image_interpolation")
DTYPES = ("float16", "float32")
"""Image dtypes a store is built with (``pipeline.config.PrepConfig.dtype``)."""
INTERPOLATIONS = ("linear", "bspline")
"""Image interpolations of a build (``PrepConfig.image_interpolation``)."""


class CardError(ValueError):
    """A card that cannot be used (missing, damaged, another format, no fitting domain); the message names the
    file and the fix."""


def case_recipe(store: str | os.PathLike[str], store_path: str) -> dict[str, Any]:
    """The preprocessing of ``store``'s domain as a JSON-able dict, read from one built case (``store_path``,
    "<domain>/<case_id>") and its domain's frozen plan: ``domain``, ``target_spacing`` (z, y, x) mm, ``modality``,
    ``percentiles``, ``ct_window`` (HU or None), ``air_hu``, image ``dtype``, ``image_interpolation``."""
    store = os.fspath(store)
    domain = store_path.split("/", 1)[0]
    plan = node_meta(store, domain, required=True)["attributes"]["plan"]
    attrs = CaseAttrs.read(store, store_path)
    norm = attrs.normalization
    dtype = node_meta(store, store_path, IMAGE, required=True)["data_type"]
    return {
        "domain": domain,
        "target_spacing": [float(s) for s in plan["target_spacing"]],
        "modality": plan.get("modality", attrs.modality or None),
        "percentiles": [float(p) for p in norm["percentiles"]],
        "ct_window": [float(w) for w in norm["ct_window"]] if norm.get("ct_window") else None,
        "air_hu": float(norm["air_hu"]) if norm.get("air_hu") is not None else -1024.0,
        "dtype": str(dtype),
        "image_interpolation": norm.get("image_interpolation", "linear"),
    }


def intensity_rule(recipe: dict[str, Any]) -> str:
    """One sentence saying what a recipe does to intensities, for people reading the card."""
    ct = "CT" in str(recipe.get("modality", "")).split("/")
    lo, hi = recipe["percentiles"]
    steps = []
    if ct:
        steps.append(f"CT: values below {recipe['air_hu']:g} HU clamped to it")
    if recipe.get("ct_window") and ct:
        w_lo, w_hi = recipe["ct_window"]
        steps.append(f"clip to the CT window [{w_lo:g}, {w_hi:g}] HU" +
                     (f" (non-CT scans: to their {lo:g}/{hi:g} percentiles)" if recipe["modality"] != "CT" else ""))
    else:
        steps.append(f"clip to each scan's {lo:g}/{hi:g} percentiles")
    steps.append("z-score with the clipped scan's mean and standard deviation (per scan, per channel)")
    steps.append(f"stored as {recipe['dtype']}")
    return "; ".join(steps)


def store_domains(store: str | os.PathLike[str], domains: list[str] | None = None,
                  trained_on: dict[str, int] | None = None) -> dict[str, dict[str, Any]]:
    """Card entries of ``store``'s domains (all, or those of ``domains`` that the store has): recipe, intensity
    rule, source dataset, channels, label names and case counts (``ok``, ``failed``, ``labelled`` and per split
    among the ok ones; ``trained_on`` where given). Raises :class:`CardError` naming the store when it cannot be
    read or a domain has no built case."""
    store = os.fspath(store)
    try:
        table = load_domains(store).set_index("domain")
        cat = load_catalog(store)
    except (FileNotFoundError, ValueError) as exc:
        raise CardError(f"cannot read the preprocessing of {store}: {exc}") from None
    out: dict[str, dict[str, Any]] = {}
    for name in [d for d in domains if d in table.index] if domains is not None else list(table.index):
        rows = cat[cat["domain"] == name]
        ok = rows[rows["status"] == "ok"]
        if ok.empty:
            raise CardError(f"{store}: domain {name!r} has no built case to read its preprocessing from "
                            f"(domains: {', '.join(table.index)}); rebuild the store or pass the right one")
        try:
            recipe = case_recipe(store, str(ok["store_path"].iloc[0]))
        except (OSError, KeyError, ValueError) as exc:
            raise CardError(f"{store}: cannot read the preprocessing of domain {name!r} ({exc!r})") from None
        recipe.pop("domain")
        dom = table.loc[name]
        cases = {"ok": int(len(ok)), "failed": int(len(rows) - len(ok)),
                 "labelled": int(ok["has_label"].astype(bool).sum())}
        cases.update({str(s): int(n) for s, n in ok["split"].value_counts().sort_index().items()})
        if trained_on is not None and name in trained_on:
            cases["trained_on"] = int(trained_on[name])
        out[name] = {"store": store, "source_dataset": str(dom["source_dataset"]), **recipe,
                     "intensity_rule": intensity_rule(recipe), "channel_names": [str(c) for c in dom["channel_names"]],
                     "labels": [str(x) for x in dom["labels"]], "cases": cases}
    return out


def _project_version() -> str:
    try:
        from importlib.metadata import version

        return version("med3d")
    except Exception:  # running from a checkout that is not installed
        return "0+unknown"


def make_card(*, kind: str, architecture: dict[str, Any], domains: dict[str, dict[str, Any]],
              config: dict[str, Any], metrics: dict[str, Any], step: int, weights: str | os.PathLike[str],
              checkpoint: str | os.PathLike[str], **extra: Any) -> dict[str, Any]:
    """A card dict (see the module docstring). ``kind`` is ``pretrain`` or ``finetune``; ``extra`` entries (a
    fine-tuning run's ``task``, ``stage``) are kept as given."""
    if kind not in ("pretrain", "finetune"):
        raise ValueError(f"kind must be 'pretrain' or 'finetune', got {kind!r}")
    if not domains:
        raise ValueError("a card needs at least one domain")
    return {"format": CARD_FORMAT, "format_version": CARD_VERSION, "med3d_version": _project_version(),
            "kind": kind, "weights": Path(weights).name, "checkpoint": os.fspath(checkpoint), "step": int(step),
            "architecture": architecture, "axes": list(AXES), "spacing_unit": "mm", "orientation": ORIENTATION,
            "domains": domains, "config": config, "metrics": metrics, **extra}


def card_path(weights: str | os.PathLike[str]) -> Path:
    """Where the card of a weights file lies: ``OUT.pth`` -> ``OUT.json``; a ``.safetensors`` file carries its card
    in its metadata (:mod:`catalog.safetensors_header`): itself."""
    path = Path(weights)
    return path if path.suffix == ".safetensors" else path.with_suffix(".json")


def write_card(card: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write ``card`` as indented JSON, atomically (a temporary file in the same folder, then a rename), with
    credentials in URLs redacted (:func:`catalog.redact.redact_url`)."""
    from .redact import redact_urls

    path = Path(path)
    card = redact_urls(card)

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(card, fh, indent=2, sort_keys=False)
            fh.write("\n")

    write_atomic(path, write, ".json")
    return path


def read_card(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and check a card. Raises :class:`CardError` naming the file: missing, not JSON, not a Med3D card,
    a newer card format, or a domain without the recipe fields."""
    path = Path(path)
    if not path.is_file():
        raise CardError(f"{path}: no such card (`med3d-train export` writes OUT.json beside OUT.pth)")
    try:
        card = embedded_card(path) if path.suffix == ".safetensors" else read_json(path, "JSON card")
    except ValueError as exc:  # not JSON, a 5000-digit number, nesting deeper than the recursion limit
        raise CardError(f"{exc}; export the weights again") from None
    if not isinstance(card, dict) or card.get("format") != CARD_FORMAT:
        raise CardError(f"{path}: not a Med3D weights card (no \"format\": \"{CARD_FORMAT}\")")
    version = card.get("format_version")
    if not finite_number(version, integer=True) or version > CARD_VERSION:
        raise CardError(f"{path}: card format version {show(version)}; this Med3D reads up to {CARD_VERSION}: "
                        "update Med3D")
    if "step" in card and not (finite_number(card["step"], integer=True) and card["step"] >= 0):
        raise CardError(f"{path}: step {show(card['step'])} is not a step count; the card is damaged, export the "
                        "weights again")
    domains = card.get("domains")
    if not isinstance(domains, dict) or not domains:
        raise CardError(f"{path}: the card lists no domain")
    for name, dom in domains.items():
        missing = [k for k in _RECIPE_KEYS if not isinstance(dom, dict) or k not in dom]
        if missing:
            raise CardError(f"{path}: domain {name!r} lacks {', '.join(missing)}; export the weights again")
        problem = unsafe_name(name) or recipe_problem(dom) or _record_problem(dom)
        if problem:
            raise CardError(f"{path}: domain {name!r}: {problem}; the card is damaged, export the weights again")
    ids = card.get("scan_ids")
    if ids is not None and not (isinstance(ids, list) and all(isinstance(i, str) for i in ids)):
        raise CardError(f"{path}: scan_ids is not a list of scan ids; the card is damaged, export the weights again")
    return card


def _numbers(value: Any, n: int) -> list[float] | None:
    """``value`` as ``n`` finite numbers (bools are not numbers), or None."""
    if not isinstance(value, (list, tuple)) or len(value) != n or not all(finite_number(v) for v in value):
        return None
    return [float(v) for v in value]


def recipe_problem(recipe: Any) -> str | None:
    """What is wrong with a recipe (a card domain's, a run's ``preprocessing``: it becomes a build's settings or
    the grid a scan is resampled to), in words naming the field, or None: a field missing, a target spacing outside
    the voxel sizes a scan header may have (:data:`catalog.values.MIN_SPACING_MM`-:data:`MAX_SPACING_MM`),
    a number that is not a finite number, a dtype or interpolation no build knows, a modality that is no name."""
    if not isinstance(recipe, dict):
        return f"the recipe {show(recipe)} is not a JSON object of {', '.join(_RECIPE_KEYS)}"
    missing = [k for k in _RECIPE_KEYS if k not in recipe]
    if missing:
        return f"lacks {', '.join(missing)}"
    spacing = _numbers(recipe["target_spacing"], 3)
    if spacing is None or not all(MIN_SPACING_MM <= s <= MAX_SPACING_MM for s in spacing):
        return (f"target_spacing {show(recipe['target_spacing'])} is not three positive finite mm values within "
                f"{MIN_SPACING_MM:g}-{MAX_SPACING_MM:g} mm (z, y, x), the voxel sizes a scan header may have")
    pct = _numbers(recipe["percentiles"], 2)
    if pct is None or not 0 <= pct[0] < pct[1] <= 100:
        return f"percentiles {show(recipe['percentiles'])} are not lo < hi within 0..100"
    window = recipe["ct_window"]
    if window is not None and ((w := _numbers(window, 2)) is None or not w[0] < w[1]):
        return f"ct_window {show(window)} is not lo < hi in HU"
    air = recipe["air_hu"]
    if air is not None and not finite_number(air):
        return f"air_hu {show(air)} is not a finite HU value"
    for key, allowed in (("dtype", DTYPES), ("image_interpolation", INTERPOLATIONS)):
        if not isinstance(recipe[key], str) or recipe[key] not in allowed:
            return f"{key} {show(recipe[key])} is not one of {', '.join(allowed)}"
    modality = recipe["modality"]
    if not isinstance(modality, str) or not modality.strip() or len(modality) > 64 or not modality.isprintable():
        return f"modality {show(modality)} is not a modality name (CT, MR, CT/MR...)"
    return None


def _record_problem(dom: dict[str, Any]) -> str | None:
    """What is wrong with a card domain's record fields (shown to people, not built with), or None."""
    rule = dom.get("intensity_rule", "")
    if not isinstance(rule, str):
        return f"intensity_rule {show(rule)} is not a sentence"
    cases = dom.get("cases", {})
    if not isinstance(cases, dict) or not all(finite_number(n, integer=True) and n >= 0 for n in cases.values()):
        return f"cases {show(cases)} are not case counts"
    return None


def find_card(weights: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The card beside a weights file (``OUT.json`` for ``OUT.pth``), or None when there is none. A file there that
    is not a usable card raises :class:`CardError` naming it."""
    path = card_path(weights)
    if path.suffix == ".safetensors" and path.is_file() and not has_embedded_card(path):
        return None  # safetensors weights without a card, as a .pth without its .json
    return read_card(path) if path.is_file() else None


def _modalities(modality: str) -> set[str]:
    return {m for m in str(modality).split("/") if m}


def _spacing_text(s: list[float]) -> str:
    return " x ".join(f"{v:g}" for v in s) + " mm (z, y, x)"


def recipe_differences(recipe: dict[str, Any], reference: dict[str, Any]) -> list[str]:
    """What ``recipe`` (a store's) does differently from ``reference`` (a card domain's), one phrase each:
    target spacing (beyond :data:`SPACING_RTOL`), percentiles, CT window and air clamp (CT only), interpolation.
    The dtype is not compared: float32 against float16 changes stored values by < 1e-3 relative."""
    out = []
    a, b = [float(v) for v in recipe["target_spacing"]], [float(v) for v in reference["target_spacing"]]
    if len(a) != len(b) or any(abs(x - y) > SPACING_RTOL * max(abs(x), abs(y)) for x, y in zip(a, b)):
        out.append(f"target spacing {_spacing_text(a)} vs {_spacing_text(b)}")
    ct = "CT" in _modalities(recipe["modality"])
    window, ref_window = (recipe.get("ct_window"), reference.get("ct_window")) if ct else (None, None)
    if window != ref_window:
        show = (lambda w: f"[{w[0]:g}, {w[1]:g}] HU" if w else "none (percentile clip)")
        out.append(f"CT window {show(window)} vs {show(ref_window)}")
    # Percentiles clip the non-CT scans always, CT scans only without a window (a window difference is said above).
    by_percentile = bool(_modalities(recipe["modality"]) - {"CT"}) or not (window or ref_window)
    if by_percentile and [float(p) for p in recipe["percentiles"]] != [float(p) for p in reference["percentiles"]]:
        out.append("clip percentiles {:g}/{:g} vs {:g}/{:g}".format(*recipe["percentiles"], *reference["percentiles"]))
    if ct and float(recipe["air_hu"]) != float(reference["air_hu"]):
        out.append(f"air clamp {float(recipe['air_hu']):g} HU vs {float(reference['air_hu']):g} HU")
    if recipe.get("image_interpolation", "linear") != reference.get("image_interpolation", "linear"):
        out.append(f"image interpolation {recipe.get('image_interpolation')} vs "
                   f"{reference.get('image_interpolation')}")
    return out


def card_mismatches(card: dict[str, Any], store_recipe: dict[str, Any]) -> list[str]:
    """How the store behind ``store_recipe`` (``volume.preprocess.recipe_from_store``: a domain's recipe) was
    preprocessed differently from the card's data, one line each; empty when it matches a card domain of its
    modality. Compared against the card domain of that modality with the fewest differences (a "CT/MR" domain
    counts for both); a card without any domain of the modality gives one line saying so."""
    mods = _modalities(store_recipe["modality"])
    candidates = {n: d for n, d in card["domains"].items() if _modalities(d["modality"]) & mods}
    name = store_recipe.get("domain", "the store")
    if not candidates:
        have = ", ".join(f"{n} ({d['modality']})" for n, d in card["domains"].items())
        return [f"{name} is {store_recipe['modality']}, but the weights saw no {store_recipe['modality']} data "
                f"(card domains: {have})"]
    diffs = {n: recipe_differences(store_recipe, d) for n, d in candidates.items()}
    # the card domain of the store's own name when there is one (a LiTS store against the card's liver), else
    # the closest; ties by name
    best = min(diffs, key=lambda n: (n != name, len(diffs[n]), n))
    return [f"{d} (store domain {name} vs card domain {best})" for d in diffs[best]]


def _like_domain(card: dict[str, Any], store_recipe: dict[str, Any]) -> str | None:
    """The card domain ``--like`` must be told (``--like-domain``) for the store's modality: None when the card
    has one domain of that modality (``--like`` picks it alone), else the one :func:`card_mismatches` compares
    with."""
    mods = _modalities(store_recipe["modality"])
    names = sorted(n for n, d in card["domains"].items() if _modalities(d["modality"]) & mods)
    if len(names) <= 1:
        return None
    name = store_recipe.get("domain")
    if name in names:
        return name
    return min(names, key=lambda n: (len(recipe_differences(store_recipe, card["domains"][n])), n))


def mismatch_warning(weights: str | os.PathLike[str], store: str, store_recipe: dict[str, Any]) -> str | None:
    """The warning ``finetune --init WEIGHTS`` prints when ``store`` was preprocessed differently from the data of
    the card beside ``weights``; None without a card or when they match. A damaged card raises :class:`CardError`."""
    card = find_card(weights)
    if card is None:
        return None
    lines = card_mismatches(card, store_recipe)
    if not lines:
        return None
    pick = _like_domain(card, store_recipe)
    like = f"--like {card_path(weights)}" + (f" --like-domain {pick}" if pick else "")
    return (f"warning: {store} was preprocessed differently from the data the --init weights saw "
            f"(card {card_path(weights)}):\n  " + "\n  ".join(lines) +
            f"\n  rebuild the store with `med3d-prep build-... {like}` to match")
