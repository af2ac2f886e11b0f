"""DINO pretraining on a target: how a derived model's ``protocol: dino`` is made.

medical_transformers' "ImageNet + DINO" models start from ImageNet weights, pretrain with
DINO on the target's train split, and are then fine-tuned on it like any other model.
:func:`dino_pretrain` is that pretraining; :mod:`harness.zoo.derived` runs it for a
derived card and keeps the teacher's backbone as the card's weights.
"""

from harness.protocols.dino.config import PRESETS, VERSION, DinoConfig, dino_config
from harness.protocols.dino.train import DinoResult, dino_pretrain

__all__ = ["PRESETS", "VERSION", "DinoConfig", "DinoResult", "dino_config", "dino_pretrain"]
