"""The ``README.md`` model card written beside exported ``model.safetensors``, in the layout model hubs read.

YAML front matter (``library_name``, ``license``, ``tags``, ``datasets``: the card's source datasets,
``metrics``: the names of the metrics the card holds, ``pipeline_tag``), then prose built from the weights card
alone: what the encoder is, the data it saw, how that data was preprocessed (spacing per domain, intensity rule),
its metrics, how to load it with Med3D and with plain torch/safetensors, the scans it saw, licence, citation.

The front matter is written by hand, every string as a JSON string (a valid YAML double-quoted scalar), so no
YAML library is needed and no value from a dataset (a label name with a colon) can break it. Table cells escape
``|``, ``<`` and line breaks. A marker comment tells a README this module wrote from one it did not, which is
never replaced (:func:`check_readme_free`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["MARKER", "README_NAME", "check_readme_free", "front_matter", "model_card_markdown"]

README_NAME = "README.md"
MARKER = "<!-- med3d-model-card: written by `med3d-train export --format safetensors`; the next export rewrites it -->"
_CITATION = """@article{chen2019med3d,
  title   = {Med3D: Transfer Learning for 3D Medical Image Analysis},
  author  = {Chen, Sihong and Ma, Kai and Zheng, Yefeng},
  journal = {arXiv preprint arXiv:1904.00625},
  year    = {2019}
}"""


def check_readme_free(folder: str | os.PathLike[str]) -> Path:
    """``folder/README.md``, checked to be absent or written by this module; ValueError naming it otherwise."""
    path = Path(folder) / README_NAME
    if path.exists():
        try:
            ours = MARKER in path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            ours = False
        if not ours:
            raise ValueError(f"refusing to replace {path}: it was not written by med3d-train export; export into "
                             "a folder of its own (OUT_DIR) or move that README away")
    return path


def _cell(value: Any) -> str:
    text = str(value).replace("\\", "\\\\").replace("|", "\\|").replace("<", "&lt;")
    return " ".join(text.split())


def _row(*cells: Any) -> str:
    return "| " + " | ".join(_cell(c) for c in cells) + " |"


def _modalities(card: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for dom in card["domains"].values():
        for m in str(dom.get("modality", "")).split("/"):
            if m and m not in out:
                out.append(m)
    return out


def _metric_name(card: dict[str, Any]) -> str:
    if card.get("kind") != "finetune":
        return "dice"
    try:
        from model.tasks.base import get_task

        return get_task(str(card.get("task"))).metric
    except Exception:  # a task this version does not know: the generic name
        return "metric"


def _metric_lines(card: dict[str, Any]) -> list[str]:
    """One "name: value" per validation figure of the card's metrics (pretraining: Dice per domain)."""
    val = (card.get("metrics") or {}).get("val") or {}
    lines = []
    if isinstance(val.get("dice"), dict):
        lines += [f"validation Dice, {d}: {v:.4f}" for d, v in val["dice"].items() if isinstance(v, (int, float))]
    if isinstance(val.get("metric"), (int, float)):
        lines.append(f"validation {_metric_name(card)} on {val.get('split', 'val')}: {val['metric']:.4f}"
                     + (f" ({val['cases']} cases)" if isinstance(val.get("cases"), int) else ""))
    step = val.get("step")
    return [f"{line} (step {step})" if isinstance(step, int) else line for line in lines]


def front_matter(card: dict[str, Any], license: str = "other") -> dict[str, Any]:
    """The model card's metadata: ``library_name``, ``license``, ``tags``, ``datasets``, ``metrics`` (only when
    the card holds a validation figure), ``pipeline_tag``."""
    tags = ["medical", "3d", "med3d", "medical-imaging", "resnet", "encoder", "safetensors"]
    tags += [m.lower() for m in _modalities(card)]
    tags.append("pretrained-encoder" if card.get("kind") == "pretrain" else "fine-tuned-encoder")
    datasets = list(dict.fromkeys(str(d.get("source_dataset") or name) for name, d in card["domains"].items()))
    meta: dict[str, Any] = {"library_name": "med3d", "license": license, "tags": list(dict.fromkeys(tags)),
                            "datasets": datasets}
    if _metric_lines(card):
        meta["metrics"] = [_metric_name(card)]
    meta["pipeline_tag"] = "image-feature-extraction"
    return meta


def _yaml(meta: dict[str, Any]) -> str:
    lines = ["---"]
    for key, value in meta.items():
        if isinstance(value, list):
            lines.append(f"{key}:")
            lines += [f"- {json.dumps(str(v))}" for v in value]
        else:
            lines.append(f"{key}: {json.dumps(str(value))}")
    return "\n".join(lines + ["---"])


def _architecture(arch: dict[str, Any]) -> list[str]:
    rows = [_row("stage", "stride", "dilation", "blocks", "channels", "output stride"), "| --- " * 6 + "|"]
    for s in arch.get("stages", []):
        rows.append(_row(s.get("module"), s.get("stride"), s.get("dilation"), s.get("blocks", ""),
                         s.get("channels", ""), s.get("output_stride", "")))
    return rows


def _what(arch: dict[str, Any]) -> str:
    """The encoder in a few words: a ResNet's depth, block and shortcut; another family's name."""
    if "depth" in arch and "shortcut" in arch:
        return f"A 3D ResNet-{arch['depth']} encoder ({arch.get('block')}, shortcut type {arch['shortcut']},"
    channels = [s.get("channels") for s in arch.get("stages", [])]
    return f"A 3D {arch.get('family', 'unknown')}-family encoder `{arch['encoder']}` (stage channels {channels},"


def _names_note(arch: dict[str, Any]) -> list[str]:
    if arch.get("family", "resnet") == "resnet":
        return ["The tensor names and shapes are those of MedicalNet's 3D ResNets without the `module.` prefix of "
                "its released files, so any ResNet built as the architecture table says loads them with "
                "`load_state_dict(state)`."]
    return [f"The tensor names and shapes are those of the `{arch['encoder']}` encoder of Med3D's registry "
            f"(`{arch.get('family')}` family); nnU-Net's residual encoders carry nnU-Net's own names without its "
            "`encoder.` prefix."]


def _spacing(values: Any) -> str:
    return " × ".join(f"{float(v):g}" for v in values)


def model_card_markdown(card: dict[str, Any], weights_name: str = "model.safetensors", *,
                        license: str = "other") -> str:
    """The whole ``README.md`` of exported weights, from their card (:func:`catalog.card.make_card`)."""
    arch = card["architecture"]
    name, domains = arch["encoder"], card["domains"]
    finetuned = card.get("kind") == "finetune"
    how = (f"fine-tuned for the `{card.get('task')}` task ({card.get('stage') or 'main'} stage) for {card['step']} "
           f"optimiser steps" if finetuned else
           f"trained by Med3D's multi-domain segmentation pretraining (a shared encoder, one 1×1×1 branch per "
           f"domain, each step one domain) for {card['step']} optimiser steps on {len(domains)} domain(s)")
    dropped = "the task's head was dropped" if finetuned else "the per-domain branches were dropped"
    out = [_yaml(front_matter(card, license)), "", MARKER, "", f"# {name} encoder (Med3D)", "",
           f"{_what(arch)} {arch['in_chans']} input channel(s), {arch['out_channels']} output channels at "
           f"output stride "
           f"{arch['stages'][-1].get('output_stride', 8) if arch.get('stages') else 8}), {how}, after Med3D "
           "(Chen, Ma and Zheng, arXiv:1904.00625). Only the encoder: " + dropped + "; a task trains its own head "
           "on its features. Written by `med3d-train export --format safetensors` "
           f"(Med3D {card.get('med3d_version', '?')}); the card it was made from is in the weights' metadata.",
           "", "## Architecture", "", *_architecture(arch), "",
           "## Training data", "", _row("domain", "source dataset", "modality", "labels", "scans trained on"),
           "| --- " * 5 + "|"]
    for dom_name, dom in domains.items():
        cases = dom.get("cases") or {}
        out.append(_row(dom_name, dom.get("source_dataset", ""), dom.get("modality", ""),
                        ", ".join(map(str, dom.get("labels", []))), cases.get("trained_on", "")))
    axes = ", ".join(card.get("axes", ["z", "y", "x"]))
    out += ["", "## Preprocessing: what the input must be", "",
            f"Inputs are float32 tensors (N, {arch['in_chans']}, z, y, x), axes ({axes}), each scan reoriented to "
            f"{card.get('orientation', 'LPS')}, resampled to its domain's spacing and normalised by its intensity "
            "rule:", "", _row("domain", "modality", f"spacing ({axes}) {card.get('spacing_unit', 'mm')}",
                              "intensity rule", "stored as"), "| --- " * 5 + "|"]
    for dom_name, dom in domains.items():
        out.append(_row(dom_name, dom.get("modality", ""), _spacing(dom["target_spacing"]),
                        dom.get("intensity_rule", ""), dom.get("dtype", "")))
    out += ["", "Data of a modality this table lacks was never seen by these weights. "
            f"`med3d-prep build-msd RAW STORE --like {weights_name}` (and every other `build-*` command) builds new "
            "data with this recipe; `med3d-train finetune --init` warns, naming each difference, when a store was "
            "built otherwise."]
    metrics = _metric_lines(card)
    if metrics:
        out += ["", "## Metrics", "", *[f"- {line}" for line in metrics]]
    task = "seg" if not finetuned else card.get("task", "seg")
    out += ["", "## Use", "", "With Med3D installed:", "", "```bash",
            f"med3d-train finetune {task if task in ('seg', 'classify') else 'seg'} STORE --out runs/ft "
            f"--init {weights_name}",
            f"med3d-train pretrain STORE --out runs/more --encoder {name} --init {weights_name}",
            "```", "", "With torch and safetensors alone:", "", "```python", "import json",
            "from safetensors import safe_open", "from safetensors.torch import load_file", "",
            f'state = load_file("{weights_name}")  # {{"conv1.weight": tensor, ...}}',
            f'with safe_open("{weights_name}", framework="pt") as f:',
            '    card = json.loads(f.metadata()["med3d_card"])  # architecture, preprocessing, scans seen',
            "", "# with Med3D's model code: strict, every tensor matched",
            "from model.nets.encoders import create_encoder",
            f'encoder = create_encoder("{name}", in_chans={arch["in_chans"]})',
            "encoder.load_state_dict(state)", "```", "",
            *_names_note(arch)]
    ids = card.get("scan_ids") or []
    out += ["", "## Scans seen", "",
            f"The card lists the {len(ids)} scan id(s) these weights were trained on (`scan_ids`, through their own "
            "initialisation too): `med3d-train finetune --init` refuses a task measured on any of them."]
    excluded = card.get("excluded_scan_ids") or []
    if excluded:
        out.append(f"{len(excluded)} scan(s) were kept out of pretraining on purpose (`excluded_scan_ids`).")
    out += ["", "## License", "",
            f"`{license}`. The weights were trained on the datasets above and their terms apply to them: check "
            "each dataset's licence before sharing the weights. Med3D's code is Apache-2.0.",
            "", "## Citation", "", "```bibtex", _CITATION, "```", ""]
    return "\n".join(out)
