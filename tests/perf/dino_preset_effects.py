"""The effect of each difference between the dino default and its medical-transformers preset.

For each demo dataset, DINO-pretrains EfficientNet-Lite0 (ImageNet) at the smoke profile
(2 epochs of batches of 8 over 96 train images at 96 px) under the default, under the
default with ONE of the preset's differences applied, and under the preset, and prints
the selection's k-NN validation score (the dataset's primary metric) of the kept teacher,
its epoch, and the mean absolute change of the kept backbone's weights from the parent.

    MEDXFER_HOME=/tmp/dino-effects python tests/perf/dino_preset_effects.py
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import torch

from harness.config.cards import get_dataset_card, get_model_card
from harness.config.cases import Case
from harness.config.profiles import get_profile
from harness.protocols.base import TaskInfo
from harness.protocols.case import CaseRun
from harness.protocols.dino import dino_config, dino_pretrain
from harness.protocols.finetune.network import trainable
from harness.zoo.build import build_model

DIFFERENCES = {
    "adam_steps_per_iteration": 2,
    "ema_schedule_offset": 1,
    "temperature_schedule_epochs": 1000,
    "knn_selection": "peer-batches",
    "val_round": 3,
    "initial_best": 0.0,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tf_efficientnet_lite0.in1k_pip")
    parser.add_argument(
        "--datasets", nargs="+", default=["demo_modality", "demo_cxr_lesion", "demo_fundus_lesion"]
    )
    parser.add_argument("--profile", default="smoke")
    args = parser.parse_args()
    torch.set_num_threads(2)
    parent = get_model_card(args.model)
    profile = get_profile(args.profile)
    loaded = build_model(parent)
    start = {k: v.clone() for k, v in trainable(loaded.module).state_dict().items()}
    default = dino_config(profile.name, None, 0)
    runs = {"default": default}
    runs |= {f"+ {k} = {v}": dataclasses.replace(default, **{k: v}) for k, v in DIFFERENCES.items()}
    runs["preset (all)"] = dino_config(profile.name, "medical-transformers", 0)
    print(f"{parent.name}, profile {profile.name}, seed 0, torch threads 2")
    print("| dataset | run | k-NN val score | epoch | mean abs weight change | time (s) |")
    print("|---|---|---:|---:|---:|---:|")
    for name in args.datasets:
        dataset = get_dataset_card(name)
        run = CaseRun(
            Case(parent, dataset, "finetune", "derived", profile), Path(tempfile.gettempdir())
        )
        splits = run.splits()
        pre = run.preprocessing()
        task = TaskInfo(dataset.task, dataset.num_classes, dataset.primary_metric, dataset.metrics)
        for label, config in runs.items():
            began = time.perf_counter()
            result = dino_pretrain(
                loaded.module,
                loaded.feature_dim,
                splits["train"],
                splits["val"],
                task,
                config,
                pre,
                "cpu",
            )
            moved = [
                float((result.backbone_state[k].float() - v.float()).abs().mean())
                for k, v in start.items()
                if v.is_floating_point() and "running" not in k
            ]
            print(
                f"| {name} | {label} | {result.val_score:.4f} ({task.primary_metric}) | "
                f"{result.best_epoch} | {sum(moved) / len(moved):.2e} | "
                f"{time.perf_counter() - began:.1f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
