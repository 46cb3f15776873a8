"""``nodule``: the LIDC nodule malignancy transfer of Med3D § 3.3: 48 mm crops, global pooling and a linear
classifier, accuracy on the ``test`` split."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from model.task_api import Task, TaskStoreError
from model.tasks.base import register_task
from model.training.finetune_config import FinetuneConfig

if TYPE_CHECKING:
    import pandas as pd
    import torch

    from model.data.task_streams import TaskData
    from model.training.loop import DistEnv


@register_task
class NoduleTask(Task):
    name = "nodule"
    help = "LIDC store (build-lidc): benign / malignant nodule crops"
    metric = "accuracy"
    segmentation = False

    def check_store(self, store: str, options: dict[str, Any] | None = None) -> None:
        from catalog import load_nodules

        if load_nodules(store, missing_ok=True) is None:
            raise TaskStoreError(f"{store}: the nodule task needs an LIDC store with nodules.parquet (build it with "
                                 "`med3d-prep build-lidc`)")

    def head(self, cfg: FinetuneConfig) -> str:
        return "nodule"

    def size_option(self, cfg: FinetuneConfig) -> str | None:
        return None  # the stored nodule crops are used whole

    def num_classes(self, train: TaskData, cfg: FinetuneConfig) -> int:
        return 2  # benign, malignant

    def loader(self, cfg: FinetuneConfig, train: TaskData, run_dir: Path, *, start: int, steps: int,
               env: DistEnv, progress: bool) -> tuple[Any, Callable | None]:
        from model.data import task_streams as td
        from model.data.patches import stream_loader

        labels = td.nodule_labels(train.store, train.cases)
        ds = td.NoduleStream(train.store, train.cases, labels, crop=train.cases[0].shape, batch=cfg.batch,
                             seed=cfg.seed, start_step=start, num_steps=steps, rank=env.rank,
                             world_size=env.world_size)
        return stream_loader(ds, cfg.workers), None

    def validator(self, cfg: FinetuneConfig, data: TaskData, run_dir: Path, *, device: torch.device,
                  amp: bool) -> Callable[[torch.nn.Module], dict[str, Any]]:
        import torch

        from model.data import task_streams as td
        from model.training.finetune_data import val_result

        cases = list(data.cases[: cfg.val_max_cases or None])
        labels = td.nodule_labels(data.store, cases)
        stream = td.NoduleStream(data.store, cases, labels, crop=cases[0].shape, batch=1, seed=0)

        @torch.no_grad()
        def accuracy(net: torch.nn.Module) -> dict[str, Any]:
            net.eval()
            hits = []
            for case in stream.cases:
                x = torch.from_numpy(stream.read_crop(case))[None].to(device)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                    pred = int(net(x).float().argmax(dim=1).item())
                hits.append(float(pred == labels[case.store_path]))
            return val_result(hits, data.split)

        return accuracy

    def evaluate(self, run: str | Path, spec: dict[str, Any], store: str, split: str, rows: pd.DataFrame,
                 out: Path, *, segmenter: Callable | None, device: Any, amp: bool, progress: bool
                 ) -> tuple[dict[str, Any], pd.DataFrame]:
        """Accuracy, AUC, sensitivity, specificity and the confusion matrix of the split's rated crops."""
        import pandas as pd
        import torch

        from model.data.store_index import CaseEntry
        from model.data.task_streams import NoduleStream, nodule_labels
        from model.evaluation.classification import binary_classification_metrics
        from model.run_folder import load_stage

        net, _ = load_stage(run, "main", device, config_type=self.config_type)
        cases = [CaseEntry(r.store_path, r.scan_id, tuple(int(s) for s in r.shape), int(r.n_channels))
                 for r in rows.itertuples(index=False)]
        labels = nodule_labels(store, cases)
        if not labels:
            raise ValueError(f"{store}: no rated nodule crop in split {split!r}")
        stream = NoduleStream(store, cases, labels, crop=cases[0].shape, batch=1, seed=0)
        device = torch.device(device)
        records = []
        with torch.no_grad():
            for case in stream.cases:
                x = torch.from_numpy(stream.read_crop(case))[None].to(device)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                    prob = float(net(x).float().softmax(dim=1)[0, 1].item())
                row = rows[rows["store_path"] == case.store_path].iloc[0]
                records.append({"case_id": row["case_id"], "source_image": row["source_image"],
                                "label": labels[case.store_path], "prob_malignant": prob, "pred": int(prob >= 0.5)})
        table = pd.DataFrame(records)
        metrics = binary_classification_metrics(table["prob_malignant"].to_numpy(), table["label"].to_numpy())
        summary = {"task": self.name, "split": split, "metric_name": "accuracy", "metric": metrics["accuracy"],
                   **metrics}
        return summary, table
