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


class Classifier(nn.Module):
    """A backbone producing pooled features followed by a new linear head."""

    def __init__(self, backbone: nn.Module, feature_dim: int, num_outputs: int) -> None:
        """Create the classifier.

        Args:
            backbone: Module mapping (B, 3, S, S) images to (B, feature_dim) features.
            feature_dim: Width of the backbone's features.
            num_outputs: Logits of the head (classes, or labels for multilabel tasks).
        """
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(feature_dim, num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


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


def make_criterion(task: str, class_weights: np.ndarray | None, device: torch.device) -> nn.Module:
    """The training loss: cross-entropy, or sigmoid + BCE for multilabel tasks.

    Args:
        task: Task type.
        class_weights: CE class weights, BCE ``pos_weight``, or None.
        device: Where the weights live.

    Returns:
        A loss module taking float32 logits and targets.
    """
    weight = None
    if class_weights is not None:
        weight = torch.as_tensor(class_weights, dtype=torch.float32, device=device)
    if task == "multilabel":
        return nn.BCEWithLogitsLoss(pos_weight=weight)
    return nn.CrossEntropyLoss(weight=weight)


@torch.inference_mode()
def predict(
    model: nn.Module, data: EvalSet, task: str, runtime: Runtime, batch_size: int
) -> np.ndarray:
    """Predicted probabilities of a split: softmax, or per-label sigmoid for multilabel.

    Always in float32 (no autocast, no TF32), whatever precision training used: bf16
    logits tie many test scores and move ROC AUC.

    Args:
        model: The classifier (left in the training mode it had).
        data: The split, with the eval transform.
        task: Task type.
        runtime: Device and memory format (its training precision is not used).
        batch_size: Images per forward pass.

    Returns:
        float64 (N, C).
    """
    was_training = model.training
    model.eval()
    chunks = []
    try:
        for x in data.batches(batch_size):
            with compute_precision(runtime.device, "fp32"):
                logits = model(runtime.inputs(x))
            logits = logits.float()
            probs = torch.sigmoid(logits) if task == "multilabel" else logits.softmax(dim=1)
            chunks.append(probs.cpu())
    finally:
        model.train(was_training)
    return torch.cat(chunks).double().numpy()
