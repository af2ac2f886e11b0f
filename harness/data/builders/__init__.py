"""Dataset builders; importing this package registers the built-in ones.

A builder makes a dataset locally and deterministically (here: the embedded demo
datasets, from images shipped in pip packages, so nothing downloads). A card names one
in ``builder: {name: ..., <params>}``; :mod:`harness.data.prepare` writes its output as
the card's ``.npz`` beside a marker holding the card's fingerprint and the builder's
name and version.

- ``dicom_modality`` (:mod:`.modality`): REAL labels, the imaging modality of patches of
  pip-shipped DICOM files.
- ``cxr_lesion``, ``fundus_lesion`` (:mod:`.lesions`): SEMI-SYNTHETIC lesion detection
  on real backgrounds.

:func:`build_demo` returns a demo build with its split bookkeeping
(:class:`~harness.data.builders.tiles.DemoBuild`), for tests and inspection.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from harness.config.card_fields import CardError, parse_params
from harness.data import DatasetError
from harness.data.builders import lesions, modality
from harness.data.builders.tiles import DemoBuild, kwargs
from harness.data.registry import BUILDERS

DEMO_BUILDS: dict[str, Callable[..., DemoBuild]] = {
    "dicom_modality": modality.build_dicom_modality,
    "cxr_lesion": lesions.build_cxr_lesion,
    "fundus_lesion": lesions.build_fundus_lesion,
}


def build_demo(name: str, *, classes: Sequence[str] | None = None, **params: Any) -> DemoBuild:
    """Build a demo dataset by builder name, with its split bookkeeping.

    Args:
        name: a demo builder's name (``dicom_modality``, ``cxr_lesion``, ``fundus_lesion``).
        classes: class names in label order (default: the builder's own).
        **params: the builder's parameters, as a card gives them.

    Raises:
        DatasetError: for an unknown builder, unknown or mistyped parameters, or bad values.
    """
    if name not in DEMO_BUILDS:
        raise DatasetError(
            f"unknown dataset builder {name!r} (known: {', '.join(sorted(DEMO_BUILDS))})"
        )
    entry = BUILDERS.get(name)
    try:
        parsed = parse_params(entry.params, params, f"builder {name}", "builder")
    except CardError as exc:
        raise DatasetError(f"bad parameters {sorted(params)}: {exc}") from exc
    return DEMO_BUILDS[name](classes=classes, **kwargs(parsed))


__all__ = ["DEMO_BUILDS", "DemoBuild", "build_demo", "lesions", "modality"]
