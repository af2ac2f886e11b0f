"""Benchmark cases as a suite expands them: a runnable :class:`Case`, or an
:class:`UnusableCase` whose model or dataset card cannot be used (it fails alone)."""

from __future__ import annotations

from dataclasses import dataclass

from harness.config.cards import DatasetCard, ModelCard
from harness.config.profiles import Profile
from harness.protocols.registry import DEFAULT_PRESET

__all__ = ["Case", "UnusableCase"]


@dataclass(frozen=True)
class Case:
    """One benchmark case: a (model, dataset, protocol) triple run under a profile."""

    model: ModelCard
    dataset: DatasetCard
    protocol: str
    suite: str
    profile: Profile
    suite_version: int = 1
    expected_required: bool = True
    preset: str = DEFAULT_PRESET

    @property
    def case_id(self) -> str:
        """Stable identifier used in records and expected-value files."""
        return f"{self.protocol}/{self.dataset.name}/{self.model.name}"

    @property
    def param_id(self) -> str:
        """The pytest parameter id: dataset and model (the test name carries the protocol)."""
        return f"{self.dataset.name}-{self.model.name}"

    @property
    def group(self) -> str:
        """xdist group: cases sharing model and dataset run on one worker to reuse features."""
        return f"{self.model.name}@{self.dataset.name}"


@dataclass(frozen=True)
class UnusableCase:
    """A case of the suite whose model or dataset card cannot be used.

    The case is still collected (so ``-k`` and the report see it) and fails alone with
    :attr:`error`; the rest of the session runs.

    Attributes:
        model: The model name as the suite lists it.
        dataset: The dataset name as the suite lists it.
        protocol: The protocol.
        suite: The suite the case comes from.
        error: What is wrong, naming the card file (or the suite file and the name).
        profile: The profile the case would run under.
    """

    model: str
    dataset: str
    protocol: str
    suite: str
    error: str
    profile: Profile
    expected_required: bool = True
    preset: str = DEFAULT_PRESET

    @property
    def case_id(self) -> str:
        """The case id the case would have."""
        return f"{self.protocol}/{self.dataset}/{self.model}"

    @property
    def param_id(self) -> str:
        """The pytest parameter id."""
        return f"{self.dataset}-{self.model}"

    @property
    def group(self) -> str:
        """xdist group (the case fails at once; any worker will do)."""
        return f"{self.model}@{self.dataset}"
