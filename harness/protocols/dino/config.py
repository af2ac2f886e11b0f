"""Settings of DINO pretraining on a target, and the medical-transformers preset.

The defaults are ChrisMats/medical_transformers@ecd460a's (``params.json`` with
``classification.py --dino``; the only study among the peers that pretrains on its
targets): Adam lr 1e-4 with a 500-iteration linear warm-up from 1e-8 then a cosine to
1e-6, weight decay 1e-5 rising on a cosine to 0.4, batch 64, 25 epochs, gradients clipped
to norm 1, the last layer frozen for the first epoch, the teacher an exponential moving
average whose momentum rises on a cosine from 0.99 to 1, a 4096-prototype head, teacher
temperature 0.04 rising to 0.07 over 30 epochs (over the run when it is shorter: the
peer's quirk below aside), two 224 px global crops (scale 0.4-1)
and six 96 px local crops (scale 0.05-0.4), stochastic depth 0.1 in a ViT student, and
the teacher's backbone of the epoch with the best weighted k-NN score (k 200,
temperature 0.1) on the validation split kept: every validation image scored against
every train image (``knn_selection="all"``).

The ``medical-transformers`` preset adds what the peer's code does besides
(:data:`PRESETS`): two Adam steps per iteration on the same gradient
(``DINOTrainer.global_step`` steps inside its precision branch and again after it, with
no ``zero_grad`` between), the momentum schedule read one iteration late (its iteration
counter is 1-based), and the teacher temperature schedule laid out for 1000 epochs
(``DINOLoss``'s ``nepochs`` default) whatever the run's length, and the peer's epoch
selection (defaults/wrappers.py ``get_dataloaders``, ``BYOLTrainer.evaluate``):

* ``knn_selection="peer-batches"``: the bank is the train split's full batches in order
  (the feature-bank loader takes the val loader's settings, ``drop_last`` on, shuffle
  off), the queries a freshly shuffled set of the validation split's full batches each
  epoch (``shuffle`` and ``drop_last`` on). When the validation split holds less than one
  batch the peer's loader is empty and it selects on the test split
  (``valLoader = testLoader``); medxfer refuses.
* ``val_round=3``: utils/metrics.py rounds every metric it reports, and an epoch is kept
  only on a strictly higher rounded score, so of two epochs tied to 3 decimals the
  earlier stays.
* ``initial_best=0.0``: the best score starts at 0 with the model the trainer began with
  kept, so a run none of whose epochs scores above 0 keeps the parent's backbone.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from harness.protocols.base import without_defaults

VERSION = 1
GLOBAL_CROPS = 2
#: How the k-NN selection picks its bank and queries (the module docstring).
KNN_SELECTIONS = ("all", "peer-batches")


@dataclass(frozen=True)
class DinoConfig:
    """Settings of one DINO pretraining run (see the module docstring for their sources).

    Attributes:
        epochs: Passes over the train split.
        batch_size: Images per iteration (the last partial batch of an epoch is dropped).
        lr: Adam's peak learning rate.
        warmup_iters: Iterations of the linear warm-up.
        warmup_start: The warm-up's starting learning rate.
        lr_floor: The cosine's final learning rate.
        weight_decay: Weight decay (coupled, Adam's) of weights and embeddings at the start.
        weight_decay_end: Where its cosine schedule ends.
        momentum: The teacher's EMA momentum at the start.
        momentum_end: Where its cosine schedule ends.
        out_dim: Prototypes of the head.
        local_crops: Local views per image.
        global_scale: RandomResizedCrop area range of the global views.
        local_scale: RandomResizedCrop area range of the local views.
        local_fraction: Local crop size as a fraction of the input size (96 / 224).
        teacher_temperature: The teacher's final temperature.
        teacher_temperature_start: Its temperature at epoch 0.
        teacher_warmup_epochs: Epochs of the temperature's linear rise (at most the
            schedule's length: a longer rise is cut to it).
        temperature_schedule_epochs: Length of the temperature schedule (None: ``epochs``).
        student_temperature: The student's softmax temperature.
        center_momentum: Momentum of the loss's centre.
        drop_path: Stochastic depth of a ViT student (its last block's rate).
        grad_clip: Total gradient norm clip.
        freeze_last_layer_epochs: Epochs during which the head's last layer gets no update.
        knn_k: Neighbours of the selection's weighted k-NN.
        knn_temperature: Its vote temperature.
        knn_selection: Its bank and queries, one of :data:`KNN_SELECTIONS`.
        val_round: Decimals the selection's scores are rounded to, or None.
        initial_best: The score an epoch must beat (strictly) to replace the parent's
            backbone, or None (the first epoch's teacher is always kept).
        adam_steps_per_iteration: Optimizer steps on each iteration's gradient.
        ema_schedule_offset: Iterations the momentum schedule is read ahead.
        seed: Seed of the sample order, augmentation and head initialisation.
        input_size: Global crop size (None: the profile's, else the model's).
    """

    epochs: int = 25
    batch_size: int = 64
    lr: float = 1e-4
    warmup_iters: int = 500
    warmup_start: float = 1e-8
    lr_floor: float = 1e-6
    weight_decay: float = 1e-5
    weight_decay_end: float = 0.4
    momentum: float = 0.99
    momentum_end: float = 1.0
    out_dim: int = 4096
    local_crops: int = 6
    global_scale: tuple[float, float] = (0.4, 1.0)
    local_scale: tuple[float, float] = (0.05, 0.4)
    local_fraction: float = 96 / 224
    teacher_temperature: float = 0.07
    teacher_temperature_start: float = 0.04
    teacher_warmup_epochs: int = 30
    temperature_schedule_epochs: int | None = None
    student_temperature: float = 0.1
    center_momentum: float = 0.9
    drop_path: float = 0.1
    grad_clip: float = 1.0
    freeze_last_layer_epochs: int = 1
    knn_k: int = 200
    knn_temperature: float = 0.1
    knn_selection: str = "all"
    val_round: int | None = None
    initial_best: float | None = None
    adam_steps_per_iteration: int = 1
    ema_schedule_offset: int = 0
    seed: int = 0
    input_size: int | None = None

    def __post_init__(self) -> None:
        for name in ("global_scale", "local_scale"):
            object.__setattr__(self, name, tuple(float(v) for v in getattr(self, name)))
        positive = ("epochs", "batch_size", "warmup_iters", "out_dim", "knn_k")
        for name in positive:
            if int(getattr(self, name)) < 1:
                raise ValueError(f"DinoConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.local_crops < 0:
            raise ValueError(f"DinoConfig.local_crops must be >= 0, got {self.local_crops}")
        if self.adam_steps_per_iteration not in (1, 2):
            raise ValueError("DinoConfig.adam_steps_per_iteration must be 1 or 2")
        if self.knn_selection not in KNN_SELECTIONS:
            raise ValueError(
                f"DinoConfig.knn_selection must be one of {KNN_SELECTIONS}, "
                f"got {self.knn_selection!r}"
            )
        if self.val_round is not None and self.val_round < 0:
            raise ValueError(f"DinoConfig.val_round must be >= 0 or None, got {self.val_round}")
        if self.ema_schedule_offset not in (0, 1):
            raise ValueError("DinoConfig.ema_schedule_offset must be 0 or 1")
        if self.schedule_epochs < self.teacher_warmup_epochs:
            object.__setattr__(self, "teacher_warmup_epochs", self.schedule_epochs)

    @property
    def schedule_epochs(self) -> int:
        """Length of the teacher temperature schedule."""
        return self.temperature_schedule_epochs or self.epochs

    @property
    def n_crops(self) -> int:
        """Views per image."""
        return GLOBAL_CROPS + self.local_crops

    @classmethod
    def for_profile(cls, profile: str) -> DinoConfig:
        """The settings of a run profile: the study's under ``paper``, a few iterations under
        ``smoke`` and ``demo`` (whose splits hold a hundred to a few hundred images)."""
        if profile == "smoke":
            return cls(epochs=2, batch_size=8, warmup_iters=2, out_dim=512, knn_k=20)
        if profile == "demo":
            return cls(epochs=3, batch_size=32, warmup_iters=10, out_dim=1024, knn_k=50)
        return cls()

    def to_dict(self) -> dict[str, Any]:
        """The settings as a JSON-friendly dict (for the derived checkpoint's key; a later
        field at its default is left out, so earlier keys stand)."""
        out = without_defaults(
            asdict(self), {"knn_selection": "all", "val_round": None, "initial_best": None}
        )
        out["global_scale"] = list(self.global_scale)
        out["local_scale"] = list(self.local_scale)
        return out


def medical_transformers(config: DinoConfig) -> DinoConfig:
    """The peer's code around its settings (see the module docstring)."""
    return dataclasses.replace(
        config,
        adam_steps_per_iteration=2,
        ema_schedule_offset=1,
        temperature_schedule_epochs=1000,
        teacher_warmup_epochs=30,
        knn_selection="peer-batches",
        val_round=3,
        initial_best=0.0,
    )


#: Preset name -> (version, config transform). medical-transformers 2: the k-NN selection
#: on the peer's loaders, scored to 3 decimals, the parent kept unless an epoch beats 0.
PRESETS: dict[str, tuple[int, Callable[[DinoConfig], DinoConfig]]] = {
    "medical-transformers": (2, medical_transformers),
}


def dino_config(profile: str, preset: str | None, seed: int) -> DinoConfig:
    """The config of a DINO derivation.

    Raises:
        ValueError: On an unknown preset.
    """
    config = dataclasses.replace(DinoConfig.for_profile(profile), seed=seed)
    if preset is None:
        return config
    if preset not in PRESETS:
        raise ValueError(f"unknown dino preset {preset!r}; known: {', '.join(PRESETS)}")
    return PRESETS[preset][1](config)
