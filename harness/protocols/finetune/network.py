"""The fine-tuned network: backbone plus a new linear head, its optimizer groups, loss and
predictions."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from harness.precision import compute_precision
from harness.protocols.finetune.data import EvalSet
from harness.protocols.finetune.runtime import Runtime
from harness.protocols.finetune.tencrop import TenCropSet


class Classifier(nn.Module):
    """A backbone producing pooled features followed by a new linear head."""

    def __init__(
        self, backbone: nn.Module, feature_dim: int, num_outputs: int, head_init: str = "default"
    ) -> None:
        """Create the classifier.

        Args:
            backbone: Module mapping (B, 3, S, S) images to (B, feature_dim) features.
            feature_dim: Width of the backbone's features.
            num_outputs: Logits of the head (classes, or labels for multilabel tasks).
            head_init: "default" (``nn.Linear``'s) or "zeros" (weights and bias, VTAB's).
        """
        super().__init__()
        self.backbone = trainable(backbone)
        self.head = nn.Linear(feature_dim, num_outputs)
        if head_init == "zeros":  # after nn.Linear's draws: the RNG stream is unchanged
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)
        elif head_init != "default":
            raise ValueError(f"Classifier: head_init must be 'default' or 'zeros': {head_init!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def trainable(backbone: nn.Module) -> nn.Module:
    """The module a classifier trains for ``backbone``: the module itself, or the inner
    network of the zoo's torchvision wrapper.

    The wrapper (``harness.zoo.build._TorchvisionBackbone``) overrides ``state_dict`` and
    ``load_state_dict`` to drop its ``model.`` prefix. Nested in a classifier, saving goes
    through the override (``backbone.features...``) but loading recurses through
    ``_load_from_state_dict`` and expects ``backbone.model.features...``, so a classifier
    around the wrapper could not restore its own best weights or checkpoints. The inner
    network computes the same function (the wrapper's forward is its forward) and its
    state-dict keys are the wrapper's public ones, so it is trained in the wrapper's place.

    Args:
        backbone: The pretrained feature extractor.

    Returns:
        A module whose saved and loaded state-dict keys agree when nested.
    """
    from harness.zoo import build

    wrapper = getattr(build, "_TorchvisionBackbone", None)
    return backbone.model if wrapper is not None and isinstance(backbone, wrapper) else backbone


def clone_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """A deep copy of a module's state dict on the CPU (never aliases live tensors).

    Args:
        module: Any module.

    Returns:
        Name -> cloned tensor.
    """
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


def param_groups(
    model: Classifier, lr: float, weight_decay: float, layer_decay: float | None
) -> list[dict[str, Any]]:
    """Optimizer parameter groups, with layer-wise learning-rate decay when asked.

    With ``layer_decay`` the backbone is split into timm's layer groups
    (``timm.optim.param_groups_layer_decay``, driven by the model's ``group_matcher``):
    group ``i`` of ``L`` gets ``lr * layer_decay ** (L - 1 - i)`` and the new head gets
    ``lr``. Weight decay stays uniform over all parameters (timm would exempt biases and
    norms) so that the decay is the only change against the plain setting.

    Args:
        model: The classifier.
        lr: Base learning rate (the head's).
        weight_decay: Weight decay of every group.
        layer_decay: Decay factor in (0, 1], or None for one group.

    Returns:
        Groups with ``params``, ``lr``, ``weight_decay`` and ``lr_scale``.

    Raises:
        ValueError: With ``layer_decay`` on a backbone that is not a timm model with a
            ``group_matcher`` (torchvision backbones have no layer grouping).
    """
    if layer_decay is None:
        params = list(model.parameters())
        return [{"params": params, "lr": lr, "weight_decay": weight_decay, "lr_scale": 1.0}]
    if not 0 < layer_decay <= 1:
        raise ValueError(f"layer_decay must lie in (0, 1], got {layer_decay}")
    backbone = model.backbone
    if not callable(getattr(backbone, "group_matcher", None)):
        raise ValueError(
            f"layer-wise learning-rate decay needs a timm backbone with group_matcher(); "
            f"{type(backbone).__name__} has none (torchvision architectures are not "
            "supported: set layer_decay=None)"
        )
    from timm.optim import param_groups_layer_decay

    groups = param_groups_layer_decay(
        backbone, weight_decay=weight_decay, layer_decay=layer_decay, weight_decay_exclude_1d=False
    )
    # timm returns a dict-ordered list; order by depth (ascending scale) for readable records.
    groups = sorted(groups, key=lambda g: g["lr_scale"])
    out = [
        {
            "params": g["params"],
            "lr": lr * g["lr_scale"],
            "weight_decay": weight_decay,
            "lr_scale": g["lr_scale"],
        }
        for g in groups
    ]
    out.append(
        {
            "params": list(model.head.parameters()),
            "lr": lr,
            "weight_decay": weight_decay,
            "lr_scale": 1.0,
        }
    )
    return out


def uses_bce(task: str, loss: str = "auto") -> bool:
    """Whether the model is trained with sigmoid + BCE (multilabel, or ``loss="bce"``)."""
    return task == "multilabel" or loss == "bce"


def num_outputs(task: str, num_classes: int, loss: str = "auto") -> int:
    """Head outputs: one per class, or a single logit for a binary task under BCE."""
    return 1 if task == "binary" and loss == "bce" else num_classes


def make_criterion(
    task: str, class_weights: np.ndarray | None, device: torch.device, loss: str = "auto"
) -> nn.Module:
    """The training loss: cross-entropy, or sigmoid + BCE (multilabel tasks, ``loss="bce"``).

    Args:
        task: Task type.
        class_weights: CE class weights, BCE ``pos_weight``, or None.
        device: Where the weights live.
        loss: "auto" or "bce".

    Returns:
        A loss module taking float32 logits and targets.
    """
    weight = None
    if class_weights is not None:
        weight = torch.as_tensor(class_weights, dtype=torch.float32, device=device)
    if uses_bce(task, loss):
        return nn.BCEWithLogitsLoss(pos_weight=weight)
    return nn.CrossEntropyLoss(weight=weight)


@torch.inference_mode()
def predict(
    model: nn.Module,
    data: EvalSet | TenCropSet,
    task: str,
    runtime: Runtime,
    batch_size: int,
    loss: str = "auto",
) -> np.ndarray:
    """Predicted probabilities of a split: softmax, or per-output sigmoid under BCE.

    Always in float32 (no autocast, no TF32), whatever precision training used: bf16
    logits tie many test scores and move ROC AUC. A binary model with a single sigmoid
    output gives ``[1 - p, p]``. TenCrop batches (B, 10, 3, S, S) give the mean of the
    ten crops' probabilities.

    Args:
        model: The classifier (left in the training mode it had).
        data: The split, with the eval transform (or TenCrop).
        task: Task type.
        runtime: Device and memory format (its training precision is not used).
        batch_size: Images per forward pass.
        loss: The training loss kind ("auto" or "bce").

    Returns:
        float64 (N, C).
    """
    was_training = model.training
    model.eval()
    chunks = []
    try:
        for x in data.batches(batch_size):
            crops = x.shape[1] if x.dim() == 5 else 1
            with compute_precision(runtime.device, "fp32"):
                logits = model(runtime.inputs(x.flatten(0, 1) if crops > 1 else x))
            logits = logits.float()
            probs = torch.sigmoid(logits) if uses_bce(task, loss) else logits.softmax(dim=1)
            probs = probs.view(-1, crops, probs.shape[1]).mean(dim=1)
            if probs.shape[1] == 1:
                probs = torch.cat([1 - probs, probs], dim=1)
            chunks.append(probs.cpu())
    finally:
        model.train(was_training)
    return torch.cat(chunks).double().numpy()


def validation_loss(task: str, loss: str, labels: np.ndarray, probabilities: np.ndarray) -> float:
    """The mean validation loss, computed from predicted probabilities (unweighted).

    BCE as torch's ``BCELoss`` on sigmoid outputs (BenchmarkTransferLearning's
    ``nn.Sigmoid`` head + ``BCELoss``); cross-entropy as the mean negative log-probability
    of the true class.

    Args:
        task: Task type.
        loss: "auto" or "bce".
        labels: (N,) class ids or (N, C) 0/1 rows.
        probabilities: (N, C) from :func:`predict`.

    Returns:
        The mean loss over samples (and outputs, under BCE).
    """
    p = torch.as_tensor(probabilities, dtype=torch.float32)
    if uses_bce(task, loss):
        if task == "multilabel":
            y = torch.as_tensor(labels, dtype=torch.float32)
        elif task == "binary":
            p, y = p[:, 1], torch.as_tensor(labels, dtype=torch.float32)
        else:
            y = nn.functional.one_hot(torch.as_tensor(labels), p.shape[1]).float()
        return float(nn.functional.binary_cross_entropy(p, y))
    log_p = torch.log(p.clamp_min(1e-30))
    return float(nn.functional.nll_loss(log_p, torch.as_tensor(labels, dtype=torch.int64)))
