"""Parsing the optional fields of a suite file (:mod:`harness.config.suites`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.config.names import unsafe_name_problem
from harness.protocols.registry import ProtocolError, get_preset


class SuiteError(ValueError):
    """A suite file is missing or malformed, or names an unknown card."""


def parse_presets(raw_presets: object, protocols: list[str], path: Path) -> dict[str, str]:
    if raw_presets is None:
        return {}
    if not isinstance(raw_presets, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in raw_presets.items()
    ):
        raise SuiteError(f"{path}: field 'presets' must map a protocol to a preset name")
    for protocol, name in raw_presets.items():
        if protocol not in protocols:
            raise SuiteError(
                f"{path}: 'presets' names protocol {protocol!r}, which the suite does not list"
            )
        try:
            get_preset(protocol, name)
        except ProtocolError as exc:
            raise SuiteError(f"{path}: field 'presets.{protocol}': {exc}") from None
    return dict(raw_presets)


def name_list(raw: dict, key: str, path: Path) -> tuple[str, ...]:
    value = raw.get(key) or []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise SuiteError(f"{path}: field '{key}' must be a list of names")
    return tuple(value)


def parse_only(raw_only: object, raw: dict, path: Path) -> dict[str, dict[str, tuple[str, ...]]]:
    if raw_only is None:
        return {}
    if not isinstance(raw_only, dict):
        raise SuiteError(
            f"{path}: 'only' must map a protocol to {{models: [...], datasets: [...]}}"
        )
    only: dict[str, dict[str, tuple[str, ...]]] = {}
    for protocol, subset in raw_only.items():
        if protocol not in raw["protocols"]:
            raise SuiteError(
                f"{path}: 'only' names protocol {protocol!r}, which the suite does not list"
            )
        if not isinstance(subset, dict) or not set(subset) <= {"models", "datasets"}:
            raise SuiteError(f"{path}: only.{protocol} may hold 'models' and 'datasets' lists")
        only[protocol] = {}
        for kind, names in subset.items():
            if not isinstance(names, list) or not all(n in raw[kind] for n in names):
                raise SuiteError(
                    f"{path}: only.{protocol}.{kind} must list {kind} of the suite, got {names!r}"
                )
            only[protocol][kind] = tuple(names)
    return only


def parse_split(raw_split: object, path: Path) -> tuple[str, dict[str, Any]]:
    """A suite's ``split`` override: the name suffix and the split rule mapping.

    ``split: {name: fold1, rule: per_class_subsets, fold: 1}`` runs every dataset of the
    suite under that rule (the card's own split is replaced), as ``<dataset>_fold1``. The
    rule and its parameters are validated against each card when the cases are made.

    Returns:
        ("", {}) when the suite has no override.
    """
    if raw_split is None:
        return "", {}
    if not isinstance(raw_split, dict) or not isinstance(raw_split.get("rule"), str):
        raise SuiteError(
            f"{path}: field 'split' must be a mapping with 'name' (the dataset name suffix) "
            "and 'rule' (a split rule), plus the rule's parameters"
        )
    suffix = raw_split.get("name")
    if not isinstance(suffix, str) or not suffix:
        raise SuiteError(f"{path}: field 'split.name' must name the override (e.g. fold1)")
    problem = unsafe_name_problem(suffix)
    if problem is not None:  # the suffix becomes part of folder names
        raise SuiteError(f"{path}: field 'split.name' {problem}")
    return suffix, {k: v for k, v in raw_split.items() if k != "name"}
