"""The markdown of tests/perf/preset_effects.py: which settings differ, and the tables.

A difference is a config field whose value differs between the medxfer default and a
preset (:func:`config_differences`), or a preprocessing value (:func:`preprocessing_differences`);
:func:`measured_tables` renders measured effects, :func:`listed_table` the differences of
a protocol that was not measured.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np

NOT_MEASURED = {
    "invariance": "not measured in this run: `--protocols invariance` measures it",
    "finetune": "not measured in this run: `--protocols finetune` measures it",
}
# Whole presets too costly to run here (their single differences are measured).
WHOLE_NOT_MEASURED = {
    "invariance": "not measured: the preset's ~79 distinct pooled images x 257 entries at "
    "224 px are ~20,000 forward passes per case, ~30 min each on this 2-core CPU",
}
# A set sweep replaces the range: these fields of the default are not differences then.
SUPERSEDED = {"c_values": ("c_min", "c_max", "n_c")}
PREPROCESSING = "preprocessing"


def show_setting(value: Any) -> str:
    """A setting as a short table cell (long sweeps by their size, ends and order)."""
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, tuple) and value and all(isinstance(v, tuple) for v in value):
        names: dict[str, int] = {}
        for name, _ in value:
            names[name] = names.get(name, 0) + 1
        return ", ".join(f"{name} x{n}" for name, n in names.items())
    if isinstance(value, tuple) and len(value) > 6:
        return f"{len(value)} values, {value[0]:.3g} ... {value[-1]:.3g}"
    if isinstance(value, tuple):
        return "(" + ", ".join(show_setting(v) for v in value) + ")"
    return str(value)


def distinct_cell(values: list[str]) -> str:
    """The distinct values of a cell over the cases, joined by " / "."""
    distinct = list(dict.fromkeys(values))
    return " / ".join(distinct).replace("|", "\\|") if distinct else "-"


def config_differences(default: Any, preset: Any) -> list[str]:
    """The config fields where ``preset`` differs from ``default``, in field order.

    Args:
        default: The medxfer default's config for a case.
        preset: The preset's config for the same case.

    Returns:
        Field names (those a set ``c_values`` supersedes left out).
    """
    names = [
        f.name
        for f in dataclasses.fields(default)
        if getattr(default, f.name) != getattr(preset, f.name)
    ]
    for field, superseded in SUPERSEDED.items():
        if field in names and getattr(preset, field) is not None:
            names = [n for n in names if n not in superseded]
    return names


def preprocessing_differences(default: Any, preset: Any) -> tuple[str, str]:
    """The preprocessing values that differ, as (default, preset) cells ('' when none)."""
    keys = [
        f.name
        for f in dataclasses.fields(default)
        if getattr(default, f.name) != getattr(preset, f.name)
    ]
    if not keys:
        return "", ""

    def show(pre: Any) -> str:
        return ", ".join(f"{key} {show_setting(getattr(pre, key))}" for key in keys)

    return show(default), show(preset)


def change_cell(changes: dict[str, float]) -> str:
    finite = {k: v for k, v in changes.items() if not math.isnan(v)}
    if not finite:
        return "-"
    mean = float(np.mean(list(finite.values())))
    worst = max(finite, key=lambda k: abs(finite[k]))
    model = worst.split("/")[2].replace("tf_efficientnet_lite0", "effnet-lite0")
    where = f"{worst.split('/')[1].removeprefix('demo_')}, {model}"
    return f"{mean:+.4f} ({finite[worst]:+.4f}: {where})"


def measured_tables(protocol: str, outcome: dict, primary: str, whole: bool = False) -> list[str]:
    """Markdown of one measured protocol: values per preset, then the difference table."""
    presets = outcome["presets"]
    skipped = {} if whole else WHOLE_NOT_MEASURED
    values = outcome["values"]
    lines = [f"### `{protocol}` (primary value: {primary}, {len(values)} cases)", ""]
    lines += ["| setting | mean value | mean change vs medxfer (largest) | cases run |"]
    lines += ["|---|---:|---|---:|"]
    for name in ["medxfer", *presets]:
        ran = {k: v[name] for k, v in values.items() if v.get(name) is not None}
        mean = f"{np.mean(list(ran.values())):.4f}" if ran else "-"
        changes = {
            k: v - values[k]["medxfer"] for k, v in ran.items() if values[k]["medxfer"] is not None
        }
        change = "-" if name == "medxfer" else change_cell(changes)
        change = skipped.get(protocol, change) if name != "medxfer" else change
        lines.append(f"| {name} | {mean} | {change} | {len(ran)}/{len(values)} |")
    lines.append("")
    lines += [
        "| preset | difference | default setting | preset setting | "
        "mean change of the primary value (largest) |",
        "|---|---|---|---|---|",
    ]
    groups: dict[tuple, list[str]] = {}  # presets whose rows are identical share them
    for name, rows in outcome["rows"].items():
        change = {
            k: v[name] - v["medxfer"]
            for k, v in values.items()
            if v.get(name) is not None and v["medxfer"] is not None
        }
        cells = []
        for row in rows.values():
            cell = change_cell(row.changes)
            if row.failures:
                reasons = distinct_cell(list(row.failures.values()))
                cell += f"; failed on {len(row.failures)} case(s): {reasons}"
            cells.append(
                (row.difference, distinct_cell(row.default), distinct_cell(row.setting), cell)
            )
        cells.append(("**all (the preset)**", "", "", skipped.get(protocol) or change_cell(change)))
        groups.setdefault(tuple(cells), []).append(name)
    for cells, names in groups.items():
        for cell in cells:
            lines.append(f"| {', '.join(names)} | " + " | ".join(cell) + " |")
    lines.append("")
    for name, per_case in outcome["features"].items():
        if per_case:
            cosines = list(per_case.values())
            lines.append(
                f"Features under `{name}`'s preprocessing against the default's (same images): "
                f"mean cosine {np.mean(cosines):.4f} (lowest case {min(cosines):.4f})."
            )
    failed = {k: v for k, v in outcome["failures"].items() if v}
    for case_id, reasons in failed.items():
        for name, reason in reasons.items():
            lines.append(f"- `{case_id}` under `{name}`: {reason}")
    lines.append("")
    lines += ["Per case:", "", "| case | " + " | ".join(["medxfer", *presets]) + " |"]
    lines.append("|---|" + "---:|" * (len(presets) + 1))
    for case_id, row in values.items():
        cells = ["-" if row.get(n) is None else f"{row[n]:.4f}" for n in ["medxfer", *presets]]
        lines.append(f"| {case_id} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def listed_table(protocol: str, case: Any, results: Path) -> list[str]:
    """Markdown of a protocol's differences without measured effects (one case's configs).

    Fine-tune's preprocessing is what its ``run_case`` uses: the preset's overrides of the
    card's, at the config's input size (else the profile's).
    """
    from harness.protocols.case import CaseRun
    from harness.protocols.finetune.presets import with_overrides
    from harness.protocols.registry import get_protocol, presets_of

    spec = get_protocol(protocol)
    run0 = CaseRun(case, results, device="cpu")
    config0 = spec.make_config(run0)
    lines = [
        f"### `{protocol}` ({case.profile.name} profile, {case.dataset.name}; "
        f"{NOT_MEASURED[protocol]})",
        "",
        "| preset | difference | default setting | preset setting |",
        "|---|---|---|---|",
    ]
    for name in presets_of(protocol):
        run_p = CaseRun(dataclasses.replace(case, preset=name), results, device="cpu")
        config_p = spec.make_config(run_p)
        for field in config_differences(config0, config_p):
            lines.append(
                f"| {name} | {field} | {show_setting(getattr(config0, field))} | "
                f"{show_setting(getattr(config_p, field))} |"
            )
        if protocol == "finetune":
            card = case.model.preprocessing
            size0 = config0.input_size or case.profile.input_size
            size_p = config_p.input_size or case.profile.input_size
            pre0 = card.with_input_size(size0)
            pre_p = with_overrides(card, run_p.preset.overrides(run_p)).with_input_size(size_p)
        else:
            pre0, pre_p = run0.preprocessing(), run_p.preprocessing()
        shown0, shown1 = preprocessing_differences(pre0, pre_p)
        if shown0:
            lines.append(f"| {name} | {PREPROCESSING} | {shown0} | {shown1} |")
    return [*lines, ""]
