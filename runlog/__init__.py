"""What a training run writes and how it is read back, without torch: the metrics log (``metrics.jsonl``) and
its curves (``loss.png``, ``val.png``, ``throughput.png``).

Both halves use it: ``model/`` writes the log (:class:`model.evaluation.metrics.MetricsLogger`) and draws the
curves for ``med3d-train plot``; ``pipeline/report`` draws them into the report page. Neither needs the other,
and the report needs no torch.
"""

from .records import METRICS_FILE, json_safe, read_metrics

__all__ = ["METRICS_FILE", "json_safe", "read_metrics"]
