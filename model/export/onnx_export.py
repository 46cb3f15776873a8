"""A fine-tuned network as ONNX or TorchScript, with what it needs to be used: the preprocessing card inside.

``med3d-train export RUN --format onnx OUT.onnx`` (or ``torchscript OUT.pt``) writes the whole network of a
one-stage fine-tuning run of the tasks that record their class names (``seg``, ``classify``): input ``image``
(N, C, z, y, x) float32, output ``logits`` (N, classes, z, y, x) or (N, classes). Its metadata (ONNX:
``metadata_props["med3d"]``; TorchScript: the extra file ``med3d.json``) is one JSON object
(:func:`network_metadata`): the task, the class names, the store's preprocessing recipe as ``finetune.json``
recorded it (spacing, intensity rule), the run's config, and which input sizes the file takes.

Input sizes. Both exporters trace the network with one input of the run's patch (or ``classify``'s resize shape)
and then record shapes as they went *in that trace*: a branch on a size (the decoder's "upsample to the input
size only if it differs") is frozen as it was taken. So the file is exported with dynamic batch and spatial axes
and then *checked* against torch on other sizes (:func:`_probe`): batch 2, the patch grown by multiples of the
encoder's output stride, and the patch grown by 1, 3 and 5 voxels. What holds is recorded (``input.spatial``:
``any``, ``multiple`` of ``input.spatial_multiple``, or ``fixed`` at ``input.size``, ONNX then re-exported with
fixed spatial axes, with the reason in ``input.note``). The run's own inference only ever feeds the patch size
(sliding windows, zero-padded), so every outcome serves ``predict``.

Liver runs chain two networks (coarse on the resized volume, fine on the region it finds) with cropping code
between them that is no network: they are refused. ``lung`` and ``nodule`` runs record no class names (and a
nodule run's input size is the store's crop): refused too, for want of the metadata the file must carry.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["EXTRA_FILE", "INPUT_NAME", "METADATA_KEY", "NETWORK_FORMAT", "OUTPUT_NAME", "NetworkExport",
           "export_network", "network_metadata", "require", "resolve_run"]

NETWORK_FORMAT = "med3d-network"
NETWORK_VERSION = 1
METADATA_KEY = "med3d"
"""ONNX ``metadata_props`` key holding :func:`network_metadata` as JSON."""
EXTRA_FILE = "med3d.json"
"""TorchScript extra file holding :func:`network_metadata` as JSON."""
INPUT_NAME, OUTPUT_NAME = "image", "logits"
OPSET = 17
_TASKS = ("seg", "classify")
# How close the exported network must stay to torch on the probes: float32 kernels differ by ~1e-6 here; a frozen
# size or a wrong branch differs by whole units, or in shape.
_PROBE_RTOL, _PROBE_ATOL = 1e-3, 1e-4


@dataclass(frozen=True)
class NetworkExport:
    """What :func:`export_network` wrote: the file, its format and its metadata."""

    path: Path
    fmt: str
    metadata: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        """One line for the command line: the file, the task and classes, which input sizes it takes."""
        inp = self.metadata["input"]
        sizes = {"any": "any spatial size", "multiple": f"spatial sizes in multiples of {inp['spatial_multiple']}",
                 "fixed": f"spatial size {'x'.join(map(str, inp['size']))} only"}[inp["spatial"]]
        return (f"wrote the {self.metadata['task']} network ({self.metadata['encoder']}, classes "
                f"{', '.join(map(str, self.metadata['classes']))}) to {self.path} ({self.fmt}; input "
                f"{INPUT_NAME} (N, {inp['channels']}, z, y, x), {sizes}; its preprocessing card is in the "
                f"{'metadata' if self.fmt == 'onnx' else 'extra file ' + EXTRA_FILE})")


def resolve_run(source: str | os.PathLike[str]) -> Path:
    """The fine-tuning run folder of ``source``: the folder itself, or the folder of its ``checkpoint.pt``.
    ValueError naming what to give otherwise (a pretraining run: its encoder exports as safetensors)."""
    from model.run_folder import RUN_FILE

    path = Path(source)
    run = path if path.is_dir() else path.parent
    if not (run / RUN_FILE).is_file():
        raise ValueError(f"{source} is not a fine-tuning run (no {RUN_FILE}): --format onnx|torchscript exports a "
                         "fine-tuned network; a pretraining run's encoder exports with --format safetensors or "
                         "medicalnet")
    return run


def _check_task(run: Path, spec: dict[str, Any]) -> None:
    stages = list(spec.get("stages") or ["main"])
    if stages != ["main"]:
        raise ValueError(f"{run} is a {spec.get('task')} run of {len(stages)} stages ({', '.join(stages)}): a coarse "
                         "network on the resized volume, then a fine one on the region it finds, chained by cropping "
                         "code that is no network; one ONNX/TorchScript file holds one network, so only one-stage "
                         "runs (seg, classify) export")
    if spec.get("task") not in _TASKS:
        raise ValueError(f"{run} is a {spec.get('task')} run, whose class names (and nodule's input size) the run "
                         "does not record, and the exported file must carry them: --format onnx|torchscript exports "
                         "seg and classify runs")


def _input_size(spec: dict[str, Any], cfg: Any) -> tuple[int, int, int]:
    return tuple(int(s) for s in (cfg.shape if spec["task"] == "classify" else cfg.patch))  # type: ignore[return-value]


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("med3d")
    except Exception:  # a checkout that is not installed
        return "0+unknown"


def network_metadata(run: Path, spec: dict[str, Any], cfg: Any, net: torch.nn.Module, *, step: int | None,
                     fmt: str, spatial: str, multiple: int | None, note: str = "") -> dict[str, Any]:
    """The JSON object embedded in the exported file: format, task, network kind, encoder, classes, the
    preprocessing recipe of ``finetune.json``, the run's config, the input (name, layout, channels, training size,
    which sizes it takes) and output, and how the run infers (patch and overlap, or resize shape)."""
    from catalog.card import AXES, ORIENTATION

    seg = bool(net.segmentation)
    size = list(_input_size(spec, cfg))
    inference = ({"mode": "sliding_window", "patch": list(cfg.patch), "overlap": float(cfg.overlap),
                  "padding": "zeros (the mean of a z-scored volume)", "aggregation": "mean of the softmax"}
                 if seg else {"mode": "whole_volume_resized", "shape": list(cfg.shape), "crop": spec.get("crop")})
    return {
        "format": NETWORK_FORMAT, "format_version": NETWORK_VERSION, "med3d_version": _version(),
        "exported_as": fmt, "task": spec["task"], "network": net.task, "encoder": spec.get("encoder"),
        "classes": [str(c) for c in spec.get("classes") or []], "preprocessing": spec["preprocessing"],
        "axes": list(AXES), "orientation": ORIENTATION, "spacing_unit": "mm",
        "input": {"name": INPUT_NAME, "layout": ["N", "C", *AXES], "channels": int(net.encoder.in_chans),
                  "dtype": "float32", "size": size, "batch": "dynamic", "spatial": spatial,
                  "spatial_multiple": multiple, "note": note},
        "output": {"name": OUTPUT_NAME, "layout": ["N", "classes", *AXES] if seg else ["N", "classes"],
                   "meaning": "logits; their softmax over axis 1 gives the class probabilities"},
        "inference": inference, "run": str(run), "step": step, "config": cfg.to_dict(),
    }


def _probe_shapes(size: tuple[int, ...], channels: int, stride: int) -> dict[str, tuple[int, ...]]:
    grown = tuple(s + stride * k for s, k in zip(size, (1, 2, 1)))
    odd = tuple(s + d for s, d in zip(size, (1, 3, 5)))
    return {"batch": (2, channels, *size), "multiple": (1, channels, *grown), "odd": (1, channels, *odd)}


def _agrees(run_exported: Callable[[np.ndarray], np.ndarray], net: torch.nn.Module, shape: tuple[int, ...]) -> bool:
    x = torch.from_numpy(np.random.default_rng(list(shape)).standard_normal(shape).astype(np.float32))
    try:
        with torch.no_grad():
            want = net(x).numpy()
    except ValueError:  # torch itself refuses the size (nnU-Net's encoder: multiples of its stride only)
        return False
    try:
        got = run_exported(x.numpy())
    except Exception:  # a frozen size made the runtime fail (concatenating mismatched skips)
        return False
    return got.shape == want.shape and bool(np.allclose(got, want, rtol=_PROBE_RTOL, atol=_PROBE_ATOL))


def _probe(run_exported: Callable[[np.ndarray], np.ndarray], net: torch.nn.Module, size: tuple[int, ...]
           ) -> tuple[str, int | None, str]:
    """(spatial, multiple, note): which input sizes the exported network computes as torch does."""
    stride = max(int(f["stride"]) for f in net.encoder.feature_info)
    shapes = _probe_shapes(size, int(net.encoder.in_chans), stride)
    if not _agrees(run_exported, net, shapes["batch"]):
        raise ValueError("the exported network disagrees with torch at batch size 2: not exported")
    if not _agrees(run_exported, net, shapes["multiple"]):
        return "fixed", None, (f"exported at the run's size {'x'.join(map(str, size))}: at "
                               f"{'x'.join(map(str, shapes['multiple'][2:]))} the traced network disagreed with "
                               "torch (a size frozen in the trace), so the spatial axes are fixed")
    if not _agrees(run_exported, net, shapes["odd"]):
        return "multiple", stride, (f"spatial sizes must be multiples of {stride} (the encoder's output stride): "
                                    "at other sizes the decoder's resizing, frozen in the trace, disagrees with "
                                    "torch; sliding-window inference at the run's patch needs no other")
    return "any", 1, ""


def _onnx_runner(path: Path) -> Callable[[np.ndarray], np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda x: session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]


def _export_onnx_file(net: torch.nn.Module, x: torch.Tensor, path: Path, spatial: bool) -> None:
    axes = {0: "batch", 2: "z", 3: "y", 4: "x"} if spatial else {0: "batch"}
    out_axes = (axes if net.segmentation else {0: "batch"})
    with warnings.catch_warnings():
        # the legacy exporter's deprecation notice, and TracerWarnings about sizes: _probe checks what they warn of
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (x,), str(path), dynamo=False, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_axes={INPUT_NAME: axes, OUTPUT_NAME: out_axes}, opset_version=OPSET,
                          do_constant_folding=True)


def require(module: str, what: str = "--format onnx") -> None:
    """ValueError naming the extra to install when ``module`` (onnx, onnxruntime) is not installed."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise ValueError(f"{what} needs the {module} package: pip install 'med3d[export]'")


def _write_onnx(net: torch.nn.Module, x: torch.Tensor, out: Path, meta_of: Callable[..., dict[str, Any]]
                ) -> dict[str, Any]:
    import onnx

    from catalog.atomic import write_atomic

    with tempfile.TemporaryDirectory(prefix=".med3d-onnx-", dir=out.parent) as tmp:
        first = Path(tmp) / "dynamic.onnx"
        size = tuple(x.shape[2:])
        try:
            _export_onnx_file(net, x, first, spatial=True)
        except Exception as exc:  # the exporter could not make the spatial axes dynamic
            spatial, multiple, note = "fixed", None, (f"exported at the run's size {'x'.join(map(str, size))}: "
                                                      f"the exporter refused dynamic spatial axes ({exc!s:.120})")
        else:
            spatial, multiple, note = _probe(_onnx_runner(first), net, size)
        if spatial == "fixed":
            _export_onnx_file(net, x, first, spatial=False)
            _probe_fixed(_onnx_runner(first), net, x)
        meta = meta_of(spatial=spatial, multiple=multiple, note=note)
        model = onnx.load(str(first))
        del model.metadata_props[:]
        for key, value in ((METADATA_KEY, json.dumps(meta)), ("format", NETWORK_FORMAT)):
            prop = model.metadata_props.add()
            prop.key, prop.value = key, value
        model.doc_string = (f"Med3D {meta['task']} network ({meta['encoder']}); preprocessing and classes: "
                            f"metadata_props['{METADATA_KEY}']")
        write_atomic(out, lambda t: onnx.save(model, t), ".onnx")
    return meta


def _probe_fixed(run_exported: Callable[[np.ndarray], np.ndarray], net: torch.nn.Module, x: torch.Tensor) -> None:
    if not _agrees(run_exported, net, tuple(x.shape)):
        raise ValueError("the exported network disagrees with torch even at the run's own input size: not exported")


def _write_torchscript(net: torch.nn.Module, x: torch.Tensor, out: Path, meta_of: Callable[..., dict[str, Any]]
                       ) -> dict[str, Any]:
    from catalog.atomic import write_atomic

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # jit.trace's deprecation notice and TracerWarnings: probed below
        traced = torch.jit.trace(net, (x,), check_trace=False)

    def run_traced(a: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return traced(torch.from_numpy(a)).numpy()

    _probe_fixed(run_traced, net, x)
    spatial, multiple, note = _probe(run_traced, net, tuple(x.shape[2:]))
    meta = meta_of(spatial=spatial, multiple=multiple, note=note)
    write_atomic(out, lambda t: torch.jit.save(traced, t, _extra_files={EXTRA_FILE: json.dumps(meta)}), ".pt")
    return meta


def export_network(source: str | os.PathLike[str], out: str | os.PathLike[str], fmt: str, *,
                   log: Callable[[str], None] = print) -> NetworkExport:
    """Export the network of the one-stage fine-tuning run ``source`` (its folder or its checkpoint) to ``out`` as
    ``fmt`` (``onnx`` or ``torchscript``) with :func:`network_metadata` inside; written atomically. Raises
    ValueError (one line) for runs that do not export and for a missing ``onnx``/``onnxruntime`` package."""
    from model.run_folder import load_stage, read_run, stage_steps
    from model.tasks.base import get_task

    if fmt not in ("onnx", "torchscript"):
        raise ValueError(f"unknown network format {fmt!r}: onnx or torchscript")
    if fmt == "onnx":
        require("onnx")
        require("onnxruntime")
    run = resolve_run(source)
    spec = read_run(run)
    _check_task(run, spec)
    steps = stage_steps(run, spec, log)
    net, cfg = load_stage(run, "main", "cpu", config_type=get_task(str(spec["task"])).config_type)
    size = _input_size(spec, cfg)
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((1, int(net.encoder.in_chans), *size))
                         .astype(np.float32))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    step = steps.get("main", [None])[0]

    def meta_of(**kw: Any) -> dict[str, Any]:
        return network_metadata(run, spec, cfg, net, step=step, fmt=fmt, **kw)

    meta = (_write_onnx if fmt == "onnx" else _write_torchscript)(net, x, out, meta_of)
    return NetworkExport(out, fmt, meta)


def _register_formats() -> None:
    from model.export.formats import ExportRequest, register_format

    def exporter(fmt: str) -> Callable[[ExportRequest], list[str]]:
        def run(request: ExportRequest) -> list[str]:
            return [export_network(request.source, request.out, fmt, log=request.log).summary()]

        run.__name__ = f"export_{fmt}"
        return run

    help_ = "a fine-tuned seg/classify RUN's whole network, its preprocessing card embedded."
    register_format("onnx", help_)(exporter("onnx"))
    register_format("torchscript", help_)(exporter("torchscript"))


_register_formats()
