"""Weights and networks other tools open: ``med3d-train export --format safetensors|onnx|torchscript``.

- :mod:`model.export.safetensors_card`: the encoder as ``model.safetensors`` (no pickle) with its weights card in
  the metadata, read back by ``--init``;
- :mod:`model.export.model_card`: the ``README.md`` model card beside it, in the layout model hubs read;
- :mod:`model.export.onnx_export`: a fine-tuned seg/classify network as ONNX or TorchScript, its preprocessing
  card embedded;
- :mod:`model.export.onnx_engine`: ``predict --engine onnx``, the ONNX file run by onnxruntime in place of torch.
- :mod:`model.export.mask_formats`: the files ``predict`` writes masks as (``--format nifti|dicom-seg``);
- :mod:`model.export.dicom_seg`: ``predict --format dicom-seg``, a DICOM Segmentation object (highdicom)
  referencing the source series.

The MedicalNet ``.pth`` format stays in :mod:`model.nets.weights`. Nothing here is imported by ``model``'s other
packages at import time: onnx, onnxruntime, safetensors and highdicom are loaded only when used.
"""
