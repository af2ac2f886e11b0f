"""DINO pretraining of a backbone on a target's train split (a derived model's making).

The loop of ChrisMats/medical_transformers@ecd460a:self_supervised/DINO/trainer.py
(``DINOTrainer.global_step`` on ``BYOLTrainer``'s epochs), per iteration: the two global
views through the teacher (no gradient), every view through the student (views of one
resolution in one forward, so a batch norm sees the peer's batches), the loss, gradients
clipped to ``grad_clip``, the head's last layer left out during the first
``freeze_last_layer_epochs`` epochs, the Adam step(s), the teacher's EMA update of every
student parameter (the head's included), then the learning rate (warm-up then cosine)
and the weight decay of the weight group (cosine) for the next iteration. Both networks
are in training mode, so a teacher's batch norm uses its batch's statistics and keeps its
own running statistics. After each epoch the teacher's backbone is scored by weighted
k-NN on the validation split against the train split (L2-normalised features of the eval
transform), and the best epoch's teacher backbone is kept (a strictly higher score
replaces it). By default every validation image is scored against every train image; the
``peer-batches`` selection (:func:`selection_sets`) scores what the peer's loaders hold,
``val_round`` rounds each score before it is ranked, and ``initial_best`` keeps the
parent's backbone unless an epoch beats it.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import numpy as np
import torch
from timm.layers import DropPath
from torch import nn
from torch.utils.data import DataLoader

from harness.config.cards import Preprocessing
from harness.data.npz import SplitData
from harness.features import extract, resolve_device
from harness.protocols.base import TaskInfo
from harness.protocols.dino.config import GLOBAL_CROPS, DinoConfig
from harness.protocols.dino.head import DinoHead, DinoLoss, cosine_schedule, teacher_temperatures
from harness.protocols.dino.views import multi_crop_transform
from harness.protocols.finetune.data import EpochBatchSampler, ImageDataset
from harness.protocols.finetune.network import clone_state, trainable
from harness.protocols.finetune.warmup import WarmupCosine
from harness.protocols.knn import KnnConfig, knn_scores
from harness.protocols.metrics import compute_metrics


@dataclass
class DinoResult:
    """What a DINO run keeps.

    Attributes:
        backbone_state: The kept teacher backbone's state dict (on CPU).
        val_score: Its k-NN validation score (the task's primary metric).
        best_epoch: The 1-based epoch it comes from (0: the parent's backbone, kept when
            no epoch beat ``initial_best``; its ``val_score`` is then NaN).
        iterations: Iterations trained.
        device: Where it trained.
        history: The k-NN validation score of every epoch.
    """

    backbone_state: dict[str, torch.Tensor]
    val_score: float
    best_epoch: int
    iterations: int
    device: torch.device
    history: list[float] = field(default_factory=list)


class DinoNetwork(nn.Module):
    """A backbone and the DINO head; views of one resolution go through it together."""

    def __init__(self, backbone: nn.Module, head: DinoHead) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, views: list[torch.Tensor]) -> torch.Tensor:
        sizes = torch.tensor([view.shape[-1] for view in views])
        ends = torch.cumsum(torch.unique_consecutive(sizes, return_counts=True)[1], 0)
        start, features = 0, []
        for end in ends.tolist():
            features.append(self.backbone(torch.cat(views[start:end])))
            start = end
        return self.head(torch.cat(features))


def with_drop_path(backbone: nn.Module, rate: float) -> nn.Module:
    """A ViT's blocks with stochastic depth rising linearly to ``rate`` (timm's rule);
    other architectures unchanged."""
    blocks = getattr(backbone, "blocks", None)
    if rate <= 0 or blocks is None:
        return backbone
    rates = torch.linspace(0, rate, len(blocks)).tolist()
    for block, block_rate in zip(blocks, rates, strict=True):
        for name in ("drop_path", "drop_path1", "drop_path2"):
            if hasattr(block, name):
                setattr(block, name, DropPath(block_rate) if block_rate > 0 else nn.Identity())
    return backbone


def student_and_teacher(
    backbone: nn.Module, feature_dim: int, config: DinoConfig, where: torch.device
) -> tuple[DinoNetwork, DinoNetwork]:
    """Copies of ``backbone`` with one new head: the student (stochastic depth in a ViT)
    and the teacher (equal weights, no gradients), as medical_transformers' ``DINOWrapper``."""
    student_backbone = with_drop_path(trainable(copy.deepcopy(backbone)), config.drop_path)
    student = DinoNetwork(student_backbone, DinoHead(feature_dim, config.out_dim)).to(where)
    teacher = DinoNetwork(trainable(copy.deepcopy(backbone)), copy.deepcopy(student.head))
    teacher.to(where).load_state_dict(student.state_dict())
    return student, teacher.requires_grad_(False)


def dino_loss(config: DinoConfig) -> DinoLoss:
    """The run's loss: its crops, temperatures (:func:`teacher_temperatures`) and centre."""
    temperatures = teacher_temperatures(
        config.teacher_temperature_start,
        config.teacher_temperature,
        config.teacher_warmup_epochs,
        config.schedule_epochs,
    )
    return DinoLoss(
        config.out_dim,
        config.n_crops,
        temperatures,
        config.student_temperature,
        config.center_momentum,
    )


def param_groups(student: nn.Module, weight_decay: float) -> list[dict]:
    """Weights and embeddings decayed (group 0, the scheduled one), biases and 1-D not."""
    decayed, plain = [], []
    for name, param in student.named_parameters():
        if param.requires_grad:
            (plain if name.endswith(".bias") or param.ndim <= 1 else decayed).append(param)
    return [
        {"params": decayed, "weight_decay": weight_decay},
        {"params": plain, "weight_decay": 0.0},
    ]


def selection_sets(
    train: SplitData, val: SplitData, config: DinoConfig
) -> tuple[SplitData, SplitData]:
    """The k-NN selection's bank and queries.

    ``all``: the train and validation splits. ``peer-batches``: the train split's full
    batches in order, and the validation split (whose rows each epoch scores are
    :func:`query_rows`).

    Raises:
        ValueError: Under ``peer-batches``, when the validation split holds less than one
            batch (the peer's val loader is then empty and it selects on the test split,
            which medxfer never does).
    """
    if config.knn_selection == "all":
        return train, val
    if len(val) < config.batch_size:
        raise ValueError(
            f"dino: the val split holds {len(val)} images, less than one batch of "
            f"{config.batch_size}: the peer-batches k-NN selection has nothing to score "
            "(medical_transformers would select on the test split instead)"
        )
    full = len(train) // config.batch_size * config.batch_size
    return SplitData(train.images[:full], train.labels[:full]), val


def query_rows(n_queries: int, config: DinoConfig, epoch: int) -> np.ndarray | None:
    """The query rows an epoch scores (None: all): under ``peer-batches`` the validation
    split's full batches of a shuffle seeded by the run's seed and the epoch."""
    if config.knn_selection == "all":
        return None
    order = np.random.default_rng([config.seed, epoch]).permutation(n_queries)
    return np.sort(order[: n_queries // config.batch_size * config.batch_size])


def knn_val_score(
    backbone: nn.Module,
    bank: SplitData,
    queries: SplitData,
    task: TaskInfo,
    config: DinoConfig,
    pre: Preprocessing,
    device: torch.device,
    rows: np.ndarray | None = None,
) -> float:
    """Weighted k-NN (cosine, ``exp(s / T)`` votes) of the queries on the bank.

    Args:
        rows: The query rows scored (None: all; every query is extracted either way).
    """
    probe = copy.deepcopy(backbone)
    bank_features = extract(
        probe, bank.images, pre, device, config.batch_size, desc="dino k-NN bank"
    )
    features = extract(probe, queries.images, pre, device, config.batch_size, desc="dino k-NN val")
    labels = queries.labels
    if rows is not None:
        features, labels = features[rows], labels[rows]
    knn = KnnConfig(ks=(config.knn_k,), temperature=config.knn_temperature, primary_k=config.knn_k)
    scores = knn_scores(bank_features, bank.labels, features, task, knn)[config.knn_k]
    return compute_metrics(task.task, labels, scores, (task.primary_metric,))[task.primary_metric]


def dino_step(
    student: DinoNetwork,
    teacher: DinoNetwork,
    loss_fn: DinoLoss,
    optimizer: torch.optim.Optimizer,
    views: list[torch.Tensor],
    epoch: int,
    beta: float,
    config: DinoConfig,
) -> float:
    """One iteration: loss, clipped step(s) with the last layer frozen early, teacher EMA.

    Args:
        student: The student network (trained).
        teacher: The teacher network (moved towards the student by ``beta``).
        loss_fn: The DINO loss (its centre is updated).
        optimizer: The student's optimizer.
        views: The batch's views, global ones first.
        epoch: The 0-based epoch.
        beta: The EMA momentum of this iteration.
        config: ``grad_clip``, ``freeze_last_layer_epochs`` and ``adam_steps_per_iteration``.

    Returns:
        The loss.

    Raises:
        FloatingPointError: When the loss is not finite.
    """
    with torch.no_grad():
        targets = teacher(views[:GLOBAL_CROPS])
    loss = loss_fn(student(views), targets, epoch)
    if not torch.isfinite(loss):
        raise FloatingPointError(f"dino: loss {float(loss)} in epoch {epoch + 1}")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    for _ in range(config.adam_steps_per_iteration):
        nn.utils.clip_grad_norm_(student.parameters(), config.grad_clip)
        if epoch < config.freeze_last_layer_epochs:
            student.head.last_layer.weight_v.grad = None
        optimizer.step()
    with torch.no_grad():
        for online, target in zip(student.parameters(), teacher.parameters(), strict=True):
            target.copy_(target * beta + (1 - beta) * online.detach())  # the peer's EMA
    return float(loss.detach())


def dino_pretrain(
    backbone: nn.Module,
    feature_dim: int,
    train: SplitData,
    val: SplitData,
    task: TaskInfo,
    config: DinoConfig,
    pre: Preprocessing,
    device: str = "auto",
) -> DinoResult:
    """Pretrain ``backbone`` with DINO on ``train``; keep the best k-NN epoch's teacher.

    Args:
        backbone: The parent's pooled-feature backbone (not modified).
        feature_dim: Its feature width.
        train: The target's train split (images; labels only for the k-NN selection).
        val: Its validation split (the selection).
        task: The target's task facts (the selection's metric).
        config: The run's settings.
        pre: The preprocessing of the views and of the k-NN features.
        device: "auto", "cpu" or "cuda".

    Returns:
        The kept teacher backbone and the run's facts.

    Raises:
        ValueError: When the train split holds fewer images than one batch, the run is
            not longer than its warm-up, or the selection has no full validation batch.
        FloatingPointError: When the loss is not finite.
    """
    where = resolve_device(device)
    # every draw (head initialisation, stochastic depth) from the seed; the caller's RNG
    # state is restored afterwards
    with torch.random.fork_rng(devices=[where] if where.type == "cuda" else []):
        torch.manual_seed(config.seed)
        per_epoch = len(train.labels) // config.batch_size
        if per_epoch < 1:
            raise ValueError(
                f"dino: the train split holds {len(train.labels)} images, fewer than one batch "
                f"of {config.batch_size}"
            )
        total = per_epoch * config.epochs
        bank, queries = selection_sets(train, val, config)
        student, teacher = student_and_teacher(backbone, feature_dim, config, where)
        loss_fn = dino_loss(config).to(where)
        optimizer = torch.optim.Adam(param_groups(student, config.weight_decay), lr=config.lr)
        if config.warmup_iters >= total:
            raise ValueError(
                f"dino: {total} iterations do not outlast the warm-up's {config.warmup_iters}"
            )
        schedule = WarmupCosine(
            optimizer, config.lr, config.warmup_iters, config.warmup_start, total, config.lr_floor
        )
        decay = cosine_schedule(config.weight_decay, config.weight_decay_end, total)
        momentum = cosine_schedule(config.momentum, config.momentum_end, total)
        # self-supervised: the views need no labels (and NaN soft labels would be refused)
        unlabelled = np.zeros(len(train.labels), dtype=np.int64)
        dataset = ImageDataset(train.images, unlabelled, multi_crop_transform(pre, config))
        sampler = EpochBatchSampler(len(dataset), config.batch_size, config.seed, drop_last=True)
        batches = iter(DataLoader(dataset, batch_sampler=sampler, pin_memory=where.type == "cuda"))
        best, best_score, kept, best_epoch, history, iteration = -math.inf, math.nan, {}, 0, [], 0
        if config.initial_best is not None:  # the parent stands until an epoch beats it
            best, kept = config.initial_best, clone_state(teacher.backbone)
        for epoch in range(config.epochs):
            student.train()
            teacher.train()
            for _ in range(per_epoch):
                views, _ = next(batches)
                views = [view.to(where, non_blocking=True) for view in views]
                iteration += 1
                beta = float(momentum[min(iteration - 1 + config.ema_schedule_offset, total - 1)])
                dino_step(student, teacher, loss_fn, optimizer, views, epoch, beta, config)
                schedule.step()
                optimizer.param_groups[0]["weight_decay"] = float(decay[min(iteration, total - 1)])
            rows = query_rows(len(queries), config, epoch)
            score = knn_val_score(teacher.backbone, bank, queries, task, config, pre, where, rows)
            if config.val_round is not None:
                score = round(score, config.val_round)
            history.append(score)
            ranked = -math.inf if math.isnan(score) else score  # NaN: nothing to rank by
            if not kept or ranked > best:
                best, best_score, best_epoch = ranked, score, epoch + 1
                kept = clone_state(teacher.backbone)
        return DinoResult(kept, float(best_score), best_epoch, iteration, where, history)
