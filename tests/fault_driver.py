"""Child process of the fault-injection suite (``tests/test_faults.py``): one operation.

Run as ``python tests/fault_driver.py OP WORKDIR``. ``MEDXFER_HOME`` and
``MEDXFER_RESULTS`` point at the shared cache and results folders. On success the
driver prints one JSON line (``DIGEST {...}``) that describes what the operation
produced (features' sha256, record metrics, fine-tune weights...), so that the parent
can compare a run that was killed and re-run with an uninterrupted one.

Operations:

* ``features``: frozen features of the 40-image tiny dataset (three splits), with a
  randomly initialised torchvision MobileNetV2 at 32 px, through
  :func:`harness.features.cached_features`.
* ``dataset``: build a small ``cxr_lesion`` dataset (the embedded demo's builder,
  60/20/30 images) through :func:`harness.data.prepare.prepare`.
* ``records``: store the record of every one of :data:`N_RECORDS` cases that has none
  yet (a finished case is never written again), through
  :func:`harness.records.results.store`.
* ``finetune``: fine-tune a tiny network 12 steps with a checkpoint every 2 steps,
  through the training store (:class:`harness.cache.runs.RunStore`).

``MEDXFER_FAULT_RENAME_KILL=K`` makes the process SIGKILL itself at its K-th
``os.replace`` / ``os.rename`` call, before the rename (the Python-level stand-in for
``strace -e inject=rename:signal=KILL:when=K``); ``MEDXFER_FAULT_COUNT_RENAMES=1``
prints how many such calls the operation made (``RENAMES n``).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

KILL_ENV = "MEDXFER_FAULT_RENAME_KILL"
COUNT_ENV = "MEDXFER_FAULT_COUNT_RENAMES"
N_RECORDS = 24
SIZE = 32
_RENAMES = [0]


def install_rename_hook() -> None:
    """Count ``os.replace`` / ``os.rename`` calls; SIGKILL this process at the K-th one."""
    kill_at = int(os.environ.get(KILL_ENV, "0") or 0)
    for name in ("replace", "rename"):
        original: Callable[..., None] = getattr(os, name)

        def hooked(src: Any, dst: Any, *args: Any, _original: Any = original, **kw: Any) -> None:
            _RENAMES[0] += 1
            if _RENAMES[0] == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            _original(src, dst, *args, **kw)

        setattr(os, name, hooked)


def _sha(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def tiny_card(workdir: Path) -> Any:
    """The tiny dataset's card (``tests/tiny_cases.py``), written once under ``workdir``."""
    from harness.config.dataset_cards import load_dataset_card_file

    path = workdir / "cards" / "datasets" / "tiny_ds.yaml"
    return load_dataset_card_file(path)


def op_features(workdir: Path) -> dict[str, Any]:
    """Extract the tiny dataset's three splits; return each split's features' sha256."""
    import torch
    import torchvision

    from harness.config.cards import get_model_card
    from harness.data.prepare import load_splits
    from harness.features import cached_features

    torch.set_num_threads(1)
    card = tiny_card(workdir)
    model = get_model_card("mobilenet_v2.random")
    pre = model.preprocessing.with_input_size(SIZE)

    def load() -> torch.nn.Module:
        torch.manual_seed(0)
        net = torchvision.models.mobilenet_v2(weights=None)
        net.classifier = torch.nn.Identity()
        return net.eval()

    out: dict[str, Any] = {}
    for split, data in load_splits(card).items():
        features, info = cached_features(
            model,
            "fault-mobilenet-seed0",
            card,
            split,
            data.images,
            pre,
            load,
            device="cpu",
            batch_size=8,
        )
        out[split] = {"sha": _sha(features), "key": info.key}
    return out


def lesion_card(workdir: Path) -> Any:
    """A small copy of the embedded ``demo_cxr_lesion`` card (60/20/30 images)."""
    import yaml

    from harness.config.dataset_cards import load_dataset_card_file

    repo = Path(__file__).resolve().parents[1]
    data = yaml.safe_load((repo / "datasets" / "demo_cxr_lesion.yaml").read_text())
    data["name"] = "fault_lesion"
    data["builder"]["counts"] = {"train": 60, "val": 20, "test": 30}
    path = workdir / "cards" / "datasets" / "fault_lesion.yaml"
    if not path.exists():  # concurrent sessions: rename a whole file into place, never half
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{os.getpid()}")
        partial.write_text(yaml.safe_dump(data))
        os.replace(partial, path)
    return load_dataset_card_file(path)


def op_dataset(workdir: Path) -> dict[str, Any]:
    """Build the small lesion dataset; return each split's images' and labels' sha256."""
    from harness.data.prepare import load_splits

    splits = load_splits(lesion_card(workdir))
    return {name: [_sha(d.images), _sha(d.labels)] for name, d in splits.items()}


def make_record(index: int) -> Any:
    """The deterministic record of case ``index`` (timestamp and run id fixed by it)."""
    from harness.records.results import DatasetInfo, ModelInfo, ProtocolInfo, ResultRecord

    value = round(0.5 + index / 100, 6)
    return ResultRecord(
        case_id=f"linear/fault_ds/model_{index:02d}",
        suite="faults",
        profile="smoke",
        model=ModelInfo(f"model_{index:02d}", "test", "test", "random"),
        dataset=DatasetInfo("fault_ds", 1, "binary", "accuracy", n={"test": 16}),
        protocol=ProtocolInfo(name="linear", version=1, config={"seed": index}),
        metrics={"accuracy": value, "roc_auc": value},
        primary_metric="accuracy",
        primary_value=value,
        timestamp=f"2026-01-01T00:00:{index:02d}.000000Z",
        run_id=f"fault-{index:02d}",
    )


def op_records(workdir: Path) -> dict[str, Any]:
    """Store the record of every case without one; return each case's primary value."""
    from harness.config.paths import results_dir
    from harness.records.results import load_record, record_dir, store

    results = results_dir()
    out: dict[str, Any] = {}
    for index in range(N_RECORDS):
        record = make_record(index)
        folder = record_dir(results, record.suite, record.case_id)
        done = sorted(p for p in folder.glob("*.json") if ".tmp-" not in p.name)
        path = done[0] if done else store(record, results)
        out[record.case_id] = load_record(path).metrics
    return out


def op_finetune(workdir: Path) -> dict[str, Any]:
    """Fine-tune a tiny network with checkpoints; return its metrics and weights' sha256."""
    import torch
    from torch import nn

    from harness.cache.runs import RunStore
    from harness.config.cards import Preprocessing
    from harness.data.npz import SplitData
    from harness.protocols.base import TaskInfo
    from harness.protocols.finetune import FinetuneConfig, run
    from harness.zoo import LoadedModel

    class TinyNet(nn.Module):
        num_features = 8

        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)
            self.bn = nn.BatchNorm2d(8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3))

    def split(n: int, seed: int) -> SplitData:
        rng = np.random.default_rng(seed)
        labels = (np.arange(n) % 2).astype(np.int64)
        images = rng.integers(0, 120, size=(n, 16, 16)).astype(np.int64)
        images[labels == 1, 4:10, 4:10] += 90
        return SplitData(np.clip(images, 0, 255).astype(np.uint8), labels)

    torch.manual_seed(0)
    card: Any = None  # the protocol never reads the card
    model = LoadedModel(card=card, module=TinyNet().eval(), feature_dim=8, weights_id="tiny")
    config = FinetuneConfig(
        steps=12,
        batch_size=8,
        lr=0.05,
        val_every=2,
        patience=None,
        input_size=16,
        cpu_threads=1,
    )
    pre = Preprocessing(16, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "bilinear", crop_pct=1.0)
    task = TaskInfo("binary", 2, "roc_auc", ("accuracy", "roc_auc"))
    splits = {"train": split(32, 0), "val": split(16, 1), "test": split(16, 2)}
    from harness.config.paths import home

    store = RunStore(home() / "checkpoints" / "fault_case", {"case_id": "finetune/fault/tiny"})
    result = run(model, splits, task, config, pre, store, device="cpu", progress=False)
    return {
        "metrics": result.metrics,
        "weights": result.details["final_weights_sha256"],
    }


#: What each operation imports before it prints READY.
PRELOAD: dict[str, tuple[str, ...]] = {
    "features": ("torch", "torchvision", "harness.features", "harness.data.prepare"),
    "dataset": ("harness.data.prepare",),
    "records": ("harness.records.results",),
    "finetune": ("torch", "harness.protocols.finetune", "harness.cache.runs"),
}

OPS: dict[str, Callable[[Path], dict[str, Any]]] = {
    "features": op_features,
    "dataset": op_dataset,
    "records": op_records,
    "finetune": op_finetune,
}


def main(argv: list[str]) -> int:
    """Run ``argv[0]`` on workdir ``argv[1]`` and print its digest."""
    install_rename_hook()
    op, workdir = argv[0], Path(argv[1])
    import importlib

    for module in PRELOAD[op]:  # imports before READY: a timed kill lands in the operation
        importlib.import_module(module)
    print("READY", flush=True)
    digest = OPS[op](workdir)
    if os.environ.get(COUNT_ENV):
        print(f"RENAMES {_RENAMES[0]}", flush=True)
    print("DIGEST " + json.dumps(digest, sort_keys=True, default=str), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
