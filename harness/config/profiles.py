"""Profiles scale a suite's cost: ``smoke`` (CI, seconds), ``demo`` (the main job), ``paper``."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from harness.config.names import did_you_mean


@dataclass(frozen=True)
class Profile:
    """How much of each dataset a case uses and at what image size.

    Attributes:
        name: profile name, recorded in every result.
        input_size: overrides the model's input size (None keeps the card's).
        max_per_split: caps on images per split, taken as a seeded stratified subset
            (None keeps the whole split).
        batch_size: feature-extraction batch size.
        seed: seed of the subset draw.
    """

    name: str
    input_size: int | None
    max_per_split: dict[str, int] | None
    batch_size: int = 64
    seed: int = 0

    def to_dict(self) -> dict[str, object]:
        """Return the profile as a plain dict (for records)."""
        return asdict(self)


PROFILES: dict[str, Profile] = {
    "smoke": Profile("smoke", input_size=96, max_per_split={"train": 96, "val": 48, "test": 64}),
    # The main job on a 2-core CPU: whole demo datasets (64 px patches) at 160 px.
    "demo": Profile("demo", input_size=160, max_per_split=None),
    "paper": Profile("paper", input_size=None, max_per_split=None),
}


def get_profile(name: str) -> Profile:
    """Return the named profile.

    Raises:
        KeyError: naming the known profiles.
    """
    if name not in PROFILES:
        raise KeyError(
            f"unknown profile {name!r}{did_you_mean(name, PROFILES)}; known: {', '.join(PROFILES)}"
        )
    return PROFILES[name]


def check_profile(profile: str) -> None:
    """Raise ``ValueError`` unless ``profile`` names a known profile (for protocol configs)."""
    if profile not in PROFILES:
        raise ValueError(
            f"unknown profile {profile!r}{did_you_mean(profile, PROFILES)}; expected one of "
            f"{tuple(PROFILES)}"
        )
