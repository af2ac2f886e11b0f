"""What each peer preset changes, and by how much: measured difference by difference.

For every protocol with peer presets (``harness.protocols.registry.presets_of``) the
script lists the config fields and preprocessing values where a preset differs from the
medxfer default, and measures them on the demo datasets with the embedded models (their
cached frozen features, through ``CaseRun.features``; a first run extracts them):

A. the default's primary value and each preset's, case by case;
B. an ablation: the default config with ONE of the preset's differing fields applied
   (one ``dataclasses.replace`` per field; fields whose constraints tie them are also
   applied together), and the default config on the features of a ``CaseRun`` whose case
   names the preset (its preprocessing), with a comparison of the two feature sets.

It prints one markdown table per protocol: difference | default setting | preset setting
| mean change of the primary value over the cases (largest single change). Everything is
seeded, so two runs print the same numbers. ``linear``, ``fewshot`` and ``knn`` are measured
by default; ``invariance`` (about 30 minutes under smoke) and ``finetune`` (full-network
training: about 10 minutes a preset on one case, ``--presets`` picks them) on request with
``--protocols``; when not measured, each gets its paper-profile difference table.

``invariance``'s value is not its primary ``mean_cosine``: that averages whatever transforms
a config sweeps, and the preset sweeps other ones (hflip 2, rotation 256, hue 5 entries,
identities included) than the default (one magnitude each of 14 transforms). The value is
the whitened cosine per transform name, averaged over the names the preset evaluates
(hflip, rotation, hue; hue is skipped on grayscale data): ``cos_<name>`` under
``aggregate="name"``, else the mean of the name's non-identity ``cos_<tag>`` entries (an
identity entry is a cosine of 1 by construction, reported as its own number). The default
and the ablations run only the default's entries of those names (rotation 10 and 90, hflip,
hue 0.1); the others are not compared and the ``torchvision-pil`` backend lacks most of them.
So ``aggregate`` alone changes nothing; with the preset's sweeps (``transforms +
aggregate``) it averages the identity in, e.g. hflip's ``c`` becomes ``(1 + c) / 2``.

    .venv/bin/python tests/perf/preset_effects.py                       # smoke profile
    .venv/bin/python tests/perf/preset_effects.py --profile demo --out preset_effects.md
    .venv/bin/python tests/perf/preset_effects.py --protocols invariance
    .venv/bin/python tests/perf/preset_effects.py --protocols invariance --whole \
        --datasets demo_cxr_lesion --models tf_efficientnet_lite0.in1k_pip
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from preset_tables import (
    PREPROCESSING,
    WHOLE_NOT_MEASURED,
    config_differences,
    listed_table,
    measured_tables,
    preprocessing_differences,
    show_setting,
)

DATASETS = ("demo_modality", "demo_cxr_lesion", "demo_fundus_lesion")
MODELS = (
    "tf_efficientnet_lite0.in1k_pip",
    "tf_efficientnet_lite0.random",
    "mobilenet_v2.tv_in1k_pip",
    "mobilenet_v2.random",
)
MEASURED = ("linear", "fewshot", "knn", "invariance", "finetune")
DEFAULT_PROTOCOLS = ("linear", "fewshot", "knn")  # invariance on request: it is slow
LISTED = ("invariance", "finetune")
COUPLED = (
    ("max_iter", "max_iter_cap"),
    ("ks", "primary_k"),
    ("transforms", "aggregate"),
    # epoch counts need epoch sampling, and val_every counts epochs only then
    ("sampling", "epochs", "val_unit", "val_every"),
    # so do once-an-epoch schedules and the LR finder's epochs (each on top of the above)
    ("sampling", "epochs", "val_unit", "val_every", "schedule"),
    ("sampling", "epochs", "val_unit", "val_every", "lr_finder", "lr_finder_epochs"),
    # a crop scale above 1 exists only in feature-reuse's augmentation
    ("augmentation", "crop_scale"),
    # Keras' Adam has no weight decay
    ("optimizer", "weight_decay"),
    # cats-scans' class weights are applied only in its k-fold runs
    ("folds", "class_weighting"),
)
INVARIANCE_VALUE = (
    "whitened cosine per transform name, mean over the preset's names; "
    "identity entries left out unless `aggregate` is `name`"
)


@dataclasses.dataclass
class Row:
    """One difference of one preset: its settings per case and the changes it makes."""

    preset: str
    difference: str
    default: list[str] = dataclasses.field(default_factory=list)
    setting: list[str] = dataclasses.field(default_factory=list)
    changes: dict[str, float] = dataclasses.field(default_factory=dict)
    failures: dict[str, str] = dataclasses.field(default_factory=dict)


def _primary(spec: Any, case_run: Any, config: Any) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = spec.run_case(case_run, config)
    primary = spec.primary_metric or case_run.case.dataset.primary_metric
    return float(result.metrics[primary])


def cosines_by_name(metrics: dict[str, float], config: Any) -> dict[str, float]:
    """An invariance record's whitened cosine per transform name.

    Args:
        metrics: The record's metrics (``cos_<name>`` or ``cos_<tag>`` keys).
        config: Its ``InvarianceConfig``.

    Returns:
        Name -> ``cos_<name>`` under ``aggregate="name"``, else the mean of the name's
        non-identity entries; names the case skipped (colour on grayscale) left out.
    """
    from harness.protocols.image_transforms import IDENTITY, transform_tag

    if config.aggregate == "name":
        names = dict.fromkeys(name for name, _ in config.transforms)
        return {name: metrics[f"cos_{name}"] for name in names if f"cos_{name}" in metrics}
    grouped: dict[str, list[float]] = {}
    for name, magnitude in config.transforms:
        key = f"cos_{transform_tag(name, magnitude)}"
        if magnitude != IDENTITY[name] and key in metrics:
            grouped.setdefault(name, []).append(metrics[key])
    return {name: float(np.mean(values)) for name, values in grouped.items()}


def _invariance_value(spec: Any, case_run: Any, config: Any, names: tuple[str, ...]) -> float:
    """The mean over ``names`` (those the case reports) of the per-name cosine."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = spec.run_case(case_run, config)
    per_name = cosines_by_name(result.metrics, config)
    reported = [per_name[name] for name in names if name in per_name]
    if not reported:
        raise ValueError(f"none of the compared transforms {names} was evaluated")
    return float(np.mean(reported))


def _invariance_setup(
    spec: Any, case: Any, results: Path, config: Any, presets: tuple[str, ...]
) -> tuple[Any, Callable[..., float]]:
    """The default config restricted to the presets' transform names, and the value function.

    Args:
        spec: The invariance protocol.
        case: Its case (medxfer default).
        results: Scratch folder.
        config: The default's config for the case.
        presets: The protocol's presets.

    Returns:
        The restricted config and ``value(spec, case_run, config) -> float``.
    """
    from harness.protocols.case import CaseRun

    names: dict[str, None] = {}
    for preset in presets:
        run_p = CaseRun(dataclasses.replace(case, preset=preset), results, device="cpu")
        names.update(dict.fromkeys(name for name, _ in spec.make_config(run_p).transforms))
    kept = tuple(entry for entry in config.transforms if entry[0] in names)
    value = partial(_invariance_value, names=tuple(names))
    return dataclasses.replace(config, transforms=kept), value


def _attempt(fn: Callable[[], float]) -> tuple[float | None, str]:
    """Run one measurement; a case the setting cannot run on gives its reason."""
    from harness.protocols.registry import CaseNotApplicable

    try:
        return fn(), ""
    except (CaseNotApplicable, ValueError) as exc:
        return None, f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"


def _replaced(
    value: Callable[..., float], spec: Any, case_run: Any, config: Any, changes: dict[str, Any]
) -> float:
    """The value (``_primary`` or invariance's) under ``config`` with ``changes`` applied."""
    return value(spec, case_run, dataclasses.replace(config, **changes))


def _ablate(
    rows: dict[str, Row],
    preset: str,
    key: str,
    shown: tuple[str, str],
    fn: Callable[[], float],
    base: float | None,
    case_id: str,
) -> None:
    """Measure one difference on one case and add it to its row."""
    row = rows.setdefault(key, Row(preset, key))
    row.default.append(shown[0])
    row.setting.append(shown[1])
    if base is None:
        row.failures[case_id] = "the default failed"
        return
    changed, reason = _attempt(fn)
    if changed is None:
        row.failures[case_id] = reason
    else:
        row.changes[case_id] = changed - base


def feature_agreement(a: dict[str, Any], b: dict[str, Any]) -> float:
    """Mean cosine between a case's features under two preprocessings (same images)."""
    values = []
    for name in a:
        x, y = a[name].features.astype(np.float64), b[name].features.astype(np.float64)
        norm = np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1)
        values.append(np.sum(x * y, axis=1) / np.where(norm > 0, norm, 1.0))
    return float(np.mean(np.concatenate(values)))


def measure(
    protocol: str,
    cases: list[Any],
    results: Path,
    log: Callable[[str], None],
    whole: bool = False,
    only: tuple[str, ...] = (),
) -> dict:
    """Default, preset and one-difference-at-a-time values of every case of a protocol.

    Args:
        protocol: A protocol with presets.
        cases: Its cases (medxfer default; the presets are set here).
        results: Scratch folder for records (none is written: ``run_case`` only).
        log: Progress lines (stderr).
        whole: Also run the whole presets of ``WHOLE_NOT_MEASURED`` (slow).
        only: Measure only these presets (all when empty).

    Returns:
        ``values`` (case id -> {"medxfer" | preset: value or None}), ``rows`` (preset ->
        list of :class:`Row`), ``features`` (preset -> case id -> mean cosine) and
        ``failures`` (case id -> preset -> reason).
    """
    from harness.protocols.case import CaseRun
    from harness.protocols.registry import get_protocol, presets_of

    spec = get_protocol(protocol)
    presets = [name for name in presets_of(protocol) if not only or name in only]
    values: dict[str, dict[str, float | None]] = {}
    rows: dict[str, dict[str, Row]] = {name: {} for name in presets}
    agreement: dict[str, dict[str, float]] = {name: {} for name in presets}
    failures: dict[str, dict[str, str]] = {}
    for case in cases:
        started = time.perf_counter()
        run0 = CaseRun(case, results, device="cpu")
        config0 = spec.make_config(run0)
        value: Callable[..., float] = _primary
        if protocol == "invariance":
            config0, value = _invariance_setup(spec, case, results, config0, presets)
        base, why = _attempt(partial(value, spec, run0, config0))
        values[case.case_id] = {"medxfer": base}
        if why:
            failures.setdefault(case.case_id, {})["medxfer"] = why
        for name in presets:
            run_p = CaseRun(dataclasses.replace(case, preset=name), results, device="cpu")
            try:
                config_p = spec.make_config(run_p)
            except Exception as exc:  # CaseNotApplicable: the preset has no such case
                failures.setdefault(case.case_id, {})[name] = f"{type(exc).__name__}: {exc}"
                values[case.case_id][name] = None
                continue
            preset_value, why = None, ""
            if whole or protocol not in WHOLE_NOT_MEASURED:
                preset_value, why = _attempt(partial(value, spec, run_p, config_p))
            values[case.case_id][name] = preset_value
            if why:
                failures.setdefault(case.case_id, {})[name] = why

            def add(key: str, shown: tuple[str, str], fn: Callable[[], float]) -> None:
                _ablate(rows[name], name, key, shown, fn, base, case.case_id)  # noqa: B023

            differing = config_differences(config0, config_p)
            for field in differing:
                shown = (
                    show_setting(getattr(config0, field)),
                    show_setting(getattr(config_p, field)),
                )
                changed = {field: getattr(config_p, field)}
                add(field, shown, partial(_replaced, value, spec, run0, config0, changed))
            for group in COUPLED:
                if all(field in differing for field in group):
                    joint = {f: getattr(config_p, f) for f in group}
                    shown = (
                        ", ".join(show_setting(getattr(config0, f)) for f in group),
                        ", ".join(show_setting(v) for v in joint.values()),
                    )
                    add(
                        " + ".join(group) + " (together)",
                        shown,
                        partial(_replaced, value, spec, run0, config0, joint),
                    )
            shown = preprocessing_differences(run0.preprocessing(), run_p.preprocessing())
            if shown[0]:
                add(PREPROCESSING, shown, partial(value, spec, run_p, config0))
                if base is not None and spec.needs == "features":
                    agreement[name][case.case_id] = feature_agreement(
                        run0.features(), run_p.features()
                    )
        log(f"{case.case_id}: {values[case.case_id]} ({time.perf_counter() - started:.0f} s)")
    return {
        "presets": presets,
        "values": values,
        "rows": rows,
        "features": agreement,
        "failures": failures,
    }


def main(argv: list[str] | None = None) -> None:
    """Measure every preset difference and print markdown tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=("smoke", "demo"), default="smoke")
    parser.add_argument("--out", default=None, help="also write the tables to this file")
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS))
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--protocols", nargs="+", choices=MEASURED, default=list(DEFAULT_PROTOCOLS))
    parser.add_argument("--presets", nargs="+", default=[], help="only these presets")
    parser.add_argument(
        "--whole",
        action="store_true",
        help="also run the whole presets skipped for cost (invariance: ~30 min a case)",
    )
    args = parser.parse_args(argv)

    from harness.config import paths
    from harness.config.suites import load_suite
    from harness.protocols.registry import get_protocol

    started = time.perf_counter()
    suite = load_suite(args.profile)  # the smoke / demo suite runs under its own profile
    cases = [
        case
        for case in suite.cases()
        if case.dataset.name in args.datasets and case.model.name in args.models
    ]
    results = Path(tempfile.mkdtemp(prefix="medxfer-preset-effects-"))
    out = [
        f"## Preset effects: {args.profile} profile, {len(args.datasets)} datasets x "
        f"{len(args.models)} models",
        "",
        f"Features from `{paths.home()}`. Change = value of the changed setting minus the "
        "medxfer default's value, per case; mean over the cases, and the largest single "
        "change with its case. Ablation rows apply ONE difference to the default config "
        "(`preprocessing`: the default config on the features of the preset's "
        "preprocessing); `all` is the preset itself.",
        "",
    ]
    for protocol in args.protocols:
        chosen = [case for case in cases if case.protocol == protocol]
        outcome = measure(
            protocol,
            chosen,
            results,
            lambda line: print(line, file=sys.stderr),
            args.whole,
            tuple(args.presets),
        )
        primary = get_protocol(protocol).primary_metric or "the dataset card's primary metric"
        primary = INVARIANCE_VALUE if protocol == "invariance" else primary
        out += measured_tables(protocol, outcome, primary, args.whole)
    for protocol in [name for name in LISTED if name not in args.protocols]:
        # paper: the peers' own invocation; fine-tune's smoke/demo scale it to the profile
        profiles = ("paper", args.profile) if protocol == "finetune" else ("paper",)
        for profile in profiles:
            chosen = [c for c in suite.cases(profile) if c.protocol == protocol]
            if chosen:
                out += listed_table(protocol, chosen[0], results)
    seconds = time.perf_counter() - started
    cpu = platform.processor() or platform.machine()
    out.append(
        f"Run time {seconds / 60:.1f} min on {os.cpu_count()} CPU cores ({cpu}), "
        f"Python {platform.python_version()}."
    )
    text = "\n".join(out) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
