"""A browsable report of a store: ``med3d-prep report STORE OUT_DIR [--runs RUN ...]``.

>>> from pipeline.report import build_report
>>> build_report("data/store", "data/report").index
PosixPath('data/report/index.html')

``figures`` (catalog rows -> matplotlib Figures), ``montage`` (planes read from the store, label overlay),
``html`` (the static page), ``build`` (the whole report).
"""
from .build import ReportResult, build_report
from .montage import CasePlanes, label_centre, overlay_rgba, read_planes

__all__ = ["CasePlanes", "ReportResult", "build_report", "label_centre", "overlay_rgba", "read_planes"]
