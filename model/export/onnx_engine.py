"""``predict --engine onnx``: the run's network replaced by its ONNX export, run by onnxruntime.

:class:`OnnxNetwork` answers the calls inference makes of a torch network (``net(x)`` on a batch, ``.eval()``,
``.encoder.in_chans``), so the sliding-window segmenter (:class:`model.evaluation.inference.PatchSegmenter`) and
the classifier's :func:`model.evaluation.classify_eval.predict_classes` run it unchanged: preprocessing, tiling,
pasting back and the written files are the torch engine's own code; only the forward pass differs.

The ONNX file is ``--onnx FILE`` (exported earlier with ``med3d-train export RUN --format onnx``) or, without
it, an export of the run made for this call in a temporary folder. Either way its embedded metadata must be the
run's (task, classes, preprocessing): a file exported from another run is refused.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from model.export.onnx_export import INPUT_NAME, METADATA_KEY, NETWORK_FORMAT, OUTPUT_NAME, require

__all__ = ["OnnxNetwork", "load_onnx_stage", "predict_onnx"]


def _providers(device: str | torch.device) -> list[str]:
    import onnxruntime as ort

    kind = torch.device(device).type
    if kind == "cpu":
        return ["CPUExecutionProvider"]
    if kind == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    raise ValueError(f"--engine onnx on {device}: this onnxruntime offers {', '.join(ort.get_available_providers())};"
                     " use --device cpu, or install onnxruntime-gpu for cuda")


class OnnxNetwork:
    """An exported network in an onnxruntime session, called like the torch one: (N, C, z, y, x) float32 tensor ->
    logits tensor on the input's device. ``metadata``: what the export embedded
    (:func:`model.export.onnx_export.network_metadata`)."""

    def __init__(self, path: str | os.PathLike[str], *, device: str | torch.device = "cpu") -> None:
        require("onnxruntime", "--engine onnx")
        import onnxruntime as ort

        try:
            self.session = ort.InferenceSession(str(path), providers=_providers(device))
        except ValueError:
            raise
        except Exception as exc:  # onnxruntime's own errors: a file that is no ONNX model
            raise ValueError(f"{path}: onnxruntime cannot load it ({str(exc).splitlines()[0][:160]})") from None
        props = self.session.get_modelmeta().custom_metadata_map
        try:
            meta = json.loads(props[METADATA_KEY])
        except (KeyError, ValueError, RecursionError):
            meta = None
        if not isinstance(meta, dict) or meta.get("format") != NETWORK_FORMAT:
            raise ValueError(f"{path}: an ONNX file without Med3D metadata ({METADATA_KEY!r}); export the run with "
                             "`med3d-train export RUN --format onnx`")
        self.path, self.metadata = Path(path), meta
        self.in_chans = int(meta["input"]["channels"])
        self.encoder = SimpleNamespace(in_chans=self.in_chans)  # what the inference code reads of a torch network

    def eval(self) -> OnnxNetwork:
        return self

    def _check(self, shape: tuple[int, ...]) -> None:
        inp, spatial = self.metadata["input"], tuple(shape[2:])
        if inp["spatial"] == "fixed" and list(spatial) != list(inp["size"]):
            raise ValueError(f"{self.path} takes spatial size {tuple(inp['size'])} only, was given {spatial}")
        if inp["spatial"] == "multiple" and any(s % int(inp["spatial_multiple"]) for s in spatial):
            raise ValueError(f"{self.path} takes spatial sizes in multiples of {inp['spatial_multiple']}, was given "
                             f"{spatial}")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self._check(tuple(x.shape))
        arr = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
        return torch.from_numpy(self.session.run([OUTPUT_NAME], {INPUT_NAME: arr})[0]).to(x.device)


def _check_same_run(net: OnnxNetwork, run: str | os.PathLike[str], spec: dict[str, Any]) -> None:
    meta = net.metadata
    differ = [key for key, mine in (("task", spec["task"]), ("classes", [str(c) for c in spec.get("classes") or []]),
                                    ("preprocessing", spec["preprocessing"])) if meta.get(key) != mine]
    if differ:
        raise ValueError(f"{net.path} was exported from another run than {run}: its {', '.join(differ)} differ "
                         f"from the run's finetune.json; export this run (`med3d-train export {run} --format onnx "
                         "OUT.onnx`) or leave out --onnx")


def load_onnx_stage(run: str | os.PathLike[str], spec: dict[str, Any], onnx_file: str | os.PathLike[str] | None,
                    *, device: str | torch.device = "cpu", log: Callable[[str], None] = print
                    ) -> tuple[OnnxNetwork, Any]:
    """(network, config) of ``run`` as :func:`model.run_folder.load_stage` gives them, the network being the ONNX
    file ``onnx_file`` (None: the run exported now, into a temporary folder) and the config the one it embeds."""
    from model.export.onnx_export import export_network
    from model.tasks.base import get_task

    if onnx_file is None:
        with tempfile.TemporaryDirectory(prefix="med3d-onnx-") as tmp:
            made = export_network(run, Path(tmp) / "model.onnx", "onnx", log=log)
            net = OnnxNetwork(made.path, device=device)  # the session holds the model: the folder may go
    else:
        net = OnnxNetwork(onnx_file, device=device)
    _check_same_run(net, run, spec)
    return net, get_task(str(spec["task"])).config_type.from_dict(net.metadata["config"])


def predict_onnx(run: str | os.PathLike[str], scans: Sequence[str | os.PathLike[str]], out: str | os.PathLike[str], *,
                 onnx_file: str | os.PathLike[str] | None = None, modality: str | None = None,
                 spacing_xyz: tuple[float, float, float] | None = None, device: str | torch.device = "cpu",
                 max_voxels: int | None = None, overwrite: bool = False, output_format: str = "nifti",
                 log: Callable[[str], None] = print) -> Any:
    """``predict`` with the ONNX engine: masks of a segmentation run (:func:`model.evaluation.predict.predict`
    with an ONNX :class:`~model.evaluation.inference.PatchSegmenter`), or ``predictions.csv`` of a classify run
    (:func:`model.evaluation.classify_eval.predict_classes` with the ONNX network). Same outputs, checks and
    refusals as the torch engine."""
    from model.evaluation.inference import PatchSegmenter
    from model.evaluation.predict import predict
    from model.run_folder import read_run
    from model.tasks.base import get_task

    spec = read_run(run)
    task = get_task(spec["task"])
    if spec["task"] not in ("seg", "classify"):
        raise ValueError(f"{run} is a {spec['task']} run: --engine onnx predicts with seg and classify runs "
                         "(what `export --format onnx` takes); use --engine torch")
    if output_format != "nifti" and not task.segmentation:
        raise ValueError(f"--format {output_format} writes masks; {run} is a {spec['task']} run, whose predictions "
                         "are a table (OUT/predictions.csv): leave --format out")
    net, cfg = load_onnx_stage(run, spec, onnx_file, device=device, log=log)
    common = {"modality": modality, "spacing_xyz": spacing_xyz, "device": device, "max_voxels": max_voxels,
              "overwrite": overwrite, "log": log}
    if task.segmentation:
        seg = PatchSegmenter(net, cfg.patch, len(spec["classes"]), overlap=cfg.overlap,
                             batch=2, device=device)
        return predict(run, scans, out, task=task, segmenter=seg, output_format=output_format, **common)
    from model.evaluation.classify_eval import predict_classes

    return predict_classes(run, spec, scans, out, network=(net, cfg), **common)
