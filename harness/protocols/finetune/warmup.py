"""feature-reuse's learning-rate schedules: LinearWarmup per iteration, then ReduceLROnPlateau
(or CosineAnnealingLR).

ChrisMats/feature-reuse@736d31b:utils/_utils.py (``LinearWarmup``, ``MixedLRScheduler``)
with params.json's ``["LinearWarmup", "ReduceLROnPlateau"]``, as its trainer
(defaults/trainer.py: ``global_step``) steps it after every optimizer step:

* ``LinearWarmup`` sets every group's lr to ``eta_min`` (1e-8) and, being a torch
  ``_LRScheduler``, steps once on construction; each step while its counter is at most
  ``warmup_iters`` *adds* ``(max_lr - eta_min) / warmup_iters`` to the group's current lr.
  The first iteration therefore trains at ``eta_min + delta`` and the lr after the warmup
  is ``max_lr + delta``, one increment above ``max_lr`` (kept: it changes the number).
* ``ReduceLROnPlateau`` (mode max on the validation metric; factor 0.1, patience 3) is
  stepped at iteration ``i`` when ``(i + 1) % steps_per_epoch == 0``: once an epoch, one
  iteration before the epoch ends, with the last validation score computed so far (the
  trainer's ``val_target``, 0 before the first validation). Its reductions multiply the
  group's lr, on which a still-running warmup keeps adding.

medical_transformers@ecd460a (the code of feature-reuse's earlier study, whose table 1
holds the published numbers) runs the same ``MixedLRScheduler`` with its params.json's
``["LinearWarmup", "CosineAnnealingLR"]`` (:class:`WarmupCosine`): the same warmup (500
iterations), then torch's ``CosineAnnealingLR(T_max=steps_per_epoch * epochs -
warmup_iters, eta_min=1e-6)`` stepped every iteration once the iteration count exceeds
the warmup's. It is torch's chainable form, so it anneals from the lr the warmup left
(one increment above ``max_lr``); its ``initial_lr`` is the warmup's ``eta_min``, used
only at a restart past the run's end.

VTAB's schedule (:func:`step_lr_factor`, the ``"step"`` schedule) is a linear warmup from 0
followed by step decays, as google-research/task_adaptation@d7630d3:task_adaptation/trainer.py
(``get_train_op``) computes it from the global step.
"""

from __future__ import annotations

from typing import Any

import torch


class _LinearWarmup:
    """feature-reuse's ``LinearWarmup`` as its ``MixedLRScheduler`` steps it."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        max_lr: float,
        warmup_iters: int,
        warmup_start: float,
    ) -> None:
        self.optimizer = optimizer
        self.delta = (max_lr - warmup_start) / warmup_iters
        self.warmup_iters = warmup_iters
        self.iteration = 0
        for group in optimizer.param_groups:
            group["lr"] = warmup_start + self.delta  # eta_min, then the constructor's step

    def _advance(self) -> bool:
        """Count an iteration; while the warmup lasts add its increment and return True."""
        self.iteration += 1
        if self.iteration > self.warmup_iters:
            return False
        for group in self.optimizer.param_groups:
            group["lr"] = group["lr"] + self.delta
        return True


class WarmupPlateau(_LinearWarmup):
    """The two schedulers of feature-reuse's ``MixedLRScheduler``, stepped as it steps them."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        max_lr: float,
        warmup_iters: int,
        warmup_start: float,
        steps_per_epoch: int,
        mode: str = "max",
        factor: float = 0.1,
        patience: int = 3,
        threshold: float = 1e-4,
        initial_value: float = 0.0,
    ) -> None:
        """Set the groups' lr to the warmup's first value (``warmup_start + delta``).

        Args:
            optimizer: The optimizer whose groups are scheduled.
            max_lr: The lr the warmup climbs to (the base lr).
            warmup_iters: Iterations of the warmup.
            warmup_start: The warmup's ``eta_min``.
            steps_per_epoch: Training iterations of an epoch.
            mode: ReduceLROnPlateau's mode ("max": metric, "min": loss).
            factor: ReduceLROnPlateau's factor.
            patience: ReduceLROnPlateau's patience (epochs).
            threshold: ReduceLROnPlateau's relative threshold.
            initial_value: The value the plateau sees before any validation.
        """
        if warmup_iters < 1 or steps_per_epoch < 1:
            raise ValueError("WarmupPlateau needs warmup_iters >= 1 and steps_per_epoch >= 1")
        super().__init__(optimizer, max_lr, warmup_iters, warmup_start)
        self.steps_per_epoch = steps_per_epoch
        self.value = float(initial_value)
        self.plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode=mode, factor=factor, patience=patience, threshold=threshold
        )

    def step(self) -> None:
        """One training iteration: warm up, and step the plateau once an epoch."""
        self._advance()
        if (self.iteration + 1) % self.steps_per_epoch == 0:
            self.plateau.step(self.value)

    def observe(self, value: float) -> None:
        """Record a validation's value (in the plateau's mode: the metric, or the loss)."""
        self.value = float(value)

    def state_dict(self) -> dict[str, Any]:
        """State for checkpoints."""
        return {
            "iteration": self.iteration,
            "value": self.value,
            "plateau": self.plateau.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s state (the groups' lrs come with the optimizer)."""
        self.iteration = int(state["iteration"])
        self.value = float(state["value"])
        self.plateau.load_state_dict(state["plateau"])


class WarmupCosine(_LinearWarmup):
    """medical_transformers' ``MixedLRScheduler`` of LinearWarmup and CosineAnnealingLR."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        max_lr: float,
        warmup_iters: int,
        warmup_start: float,
        horizon: int,
        floor: float,
    ) -> None:
        """Set the groups' lr to the warmup's first value (``warmup_start + delta``).

        Args:
            optimizer: The optimizer whose groups are scheduled.
            max_lr: The lr the warmup climbs to (the base lr).
            warmup_iters: Iterations of the warmup.
            warmup_start: The warmup's ``eta_min``.
            horizon: Iterations of the whole run (``steps_per_epoch * epochs``).
            floor: The cosine's ``eta_min``.
        """
        if not 1 <= warmup_iters < horizon:
            raise ValueError("WarmupCosine needs 1 <= warmup_iters < horizon")
        super().__init__(optimizer, max_lr, warmup_iters, warmup_start)
        # the peer builds it after the warmup, which left initial_lr at its eta_min (used
        # only at a restart past the run's end); its constructor step keeps the lr
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", warmup_start)
        self.cosine = torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=horizon - warmup_iters, eta_min=floor
        )

    def step(self) -> None:
        """One training iteration: warm up, then anneal."""
        if not self._advance():
            self.cosine.step()

    def state_dict(self) -> dict[str, Any]:
        """State for checkpoints."""
        return {"iteration": self.iteration, "cosine": self.cosine.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s state (the groups' lrs come with the optimizer)."""
        self.iteration = int(state["iteration"])
        self.cosine.load_state_dict(state["cosine"])


def decay_boundaries(horizon: int, decay_at: tuple[float, ...]) -> list[int]:
    """The steps after which the ``"step"`` schedule decays: ``round(f * horizon)`` per f.

    VTAB passes them as integers (``--decay_steps 750,1500,2250`` for 2500 steps: 30%,
    60% and 90%).
    """
    return [round(f * horizon) for f in decay_at]


def step_lr_factor(
    step: int, horizon: int, decay_at: tuple[float, ...], factor: float, warmup: int
) -> float:
    """VTAB's learning-rate multiplier for the update at ``step`` (0-based global step).

    ``tf.train.piecewise_constant`` keeps a value while ``step <= boundary``, so the lr is
    ``factor ** (number of boundaries b with step > b)``; ``apply_warmup_lr`` replaces it
    with ``step / warmup`` while ``step < warmup`` (the first update is at lr 0).

    Args:
        step: Updates done before this one.
        horizon: The run's length in steps (the decays are fractions of it).
        decay_at: Fractions of ``horizon`` after which the lr is multiplied by ``factor``.
        factor: The decay factor (VTAB's ``lr_decay_factor``, 0.1).
        warmup: Linear warmup steps (0: none).

    Returns:
        The multiplier of the base lr.
    """
    if step < warmup:
        return step / warmup
    return factor ** sum(step > b for b in decay_boundaries(horizon, decay_at))
