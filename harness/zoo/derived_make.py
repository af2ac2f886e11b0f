"""Making a derived model's network: fine-tuning, or DINO pretraining, of its parent.

:func:`derive` trains what a derived card names (:mod:`harness.zoo.derived` keys, stores
and verifies the result) and returns the state to keep, ``backbone.*`` (and a fine-tuned
network's source head ``head.*``), with the provenance metadata.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

import torch

from harness.zoo.derived_files import BACKBONE_PREFIX, CREATED_BY, DERIVED_FORMAT

if TYPE_CHECKING:
    from harness.zoo.derived import Derivation

LOG = logging.getLogger("medxfer.derived")


def derive(derivation: Derivation, device: str, progress: bool) -> tuple[dict, dict[str, str]]:
    """Train the parent on the source dataset (fine-tune or DINO); return the state and metadata."""
    import numpy
    import safetensors
    import timm

    import harness
    from harness.cache.keys import array_digest
    from harness.protocols.base import TaskInfo
    from harness.zoo.build import weights_identity

    card, parent, dataset = derivation.card, derivation.parent, derivation.dataset
    made = card.weights.derived.made  # type: ignore[union-attr]
    LOG.warning("deriving model %s: %s %s on %s", card.name, parent.name, made, dataset.name)
    splits = derivation.run.splits()
    task = TaskInfo(dataset.task, dataset.num_classes, dataset.primary_metric, dataset.metrics)
    state, facts = _TRAINERS[derivation.protocol](derivation, splits, task, device, progress)
    preset = derivation.preset_id
    metadata = {
        "format": str(DERIVED_FORMAT),
        "parent": parent.name,
        "parent_weights_id": weights_identity(parent),
        "dataset": dataset.name,
        "dataset_version": str(dataset.version),
        "protocol": derivation.protocol,
        "protocol_version": str(derivation.protocol_version),
        "preset": "medxfer" if preset is None else preset[0],
        "preset_version": "" if preset is None else str(preset[1]),
        "profile": derivation.profile.name,
        "seed": str(derivation.config.seed),
        "primary_metric": dataset.primary_metric,
        "val_score": repr(float(facts["val_score"])),
        "steps": str(facts["steps"]),
        "n_train": str(len(splits["train"])),
        "n_val": str(len(splits["val"])),
        "data_sha256": json.dumps(
            {name: array_digest(splits[name].images) for name in ("train", "val")}, sort_keys=True
        ),
        "device": str(facts["device"]),
        "versions": json.dumps(
            {
                "medxfer": harness.__version__,
                "torch": torch.__version__,
                "timm": timm.__version__,
                "numpy": numpy.__version__,
                "safetensors": safetensors.__version__,
            },
            sort_keys=True,
        ),
        "created_by": CREATED_BY,
    }
    return state, metadata


def _finetune(
    derivation: Derivation, splits: dict[str, Any], task: Any, device: str, progress: bool
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Fine-tune the parent on the source; the whole network (``backbone.*``, ``head.*``)."""
    from harness.protocols.finetune import fine_tune
    from harness.zoo.build import build_model

    fitted = fine_tune(
        build_model(derivation.parent),
        splits["train"],
        splits["val"],
        task,
        derivation.config,
        derivation.preprocessing,
        device=device,
        progress=progress,
    )
    state = {k: v.detach().to("cpu").contiguous() for k, v in fitted.model.state_dict().items()}
    facts = {
        "val_score": float(fitted.hyperparameters.get("val_primary", float("nan"))),
        "steps": fitted.hyperparameters.get("steps", ""),
        "device": fitted.runtime.device.type,
    }
    return state, facts


def _dino(
    derivation: Derivation, splits: dict[str, Any], task: Any, device: str, progress: bool
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Pretrain the parent with DINO on the source; the kept teacher backbone as ``backbone.*``."""
    from harness.protocols.dino import dino_pretrain
    from harness.zoo.build import build_model

    loaded = build_model(derivation.parent)
    result = dino_pretrain(
        loaded.module,
        loaded.feature_dim,
        splits["train"],
        splits["val"],
        task,
        derivation.config,
        derivation.preprocessing,
        device=device,
    )
    if result.best_epoch == 0:
        LOG.warning(
            "model %s: no DINO epoch's k-NN score beat %s: the parent's backbone is kept, as "
            "medical_transformers keeps it",
            derivation.card.name,
            derivation.config.initial_best,
        )
    state = {BACKBONE_PREFIX + k: v.contiguous() for k, v in result.backbone_state.items()}
    facts = {
        "val_score": result.val_score,
        "steps": result.iterations,
        "device": result.device.type,
    }
    return state, facts


#: Each derive protocol (``DERIVE_PROTOCOLS``) -> the function that trains the parent.
_TRAINERS = {"finetune": _finetune, "dino": _dino}
