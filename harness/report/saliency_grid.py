"""Saliency overlays in the report: a small grid per (model, dataset) from the artefacts.

The ``saliency`` protocol writes its PNGs next to the case's records
(``<results>/<suite>/<case>/artefacts/<run id>/``) and lists them in the record's
``details.images`` (``overlay``, ``heatmap``: paths relative to the results folder). The
report reads them back from the record the shown row came from and draws one grid per
case, overlays on top and heat maps below, into its own figures folder: the report then
stands alone, and its name is the case's, so the same records give the same files. An
artefact that is gone (or a record without pictures) becomes a note, never an error.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from harness.records.results import RecordError, load_record
from harness.report.analysis_figures import AnalysisFigure, setting_groups
from harness.report.figures import _slug
from harness.report.format import fmt, text_or_none
from harness.report.plots import compact_png

PROTOCOL = "saliency"
MAX_IMAGES = 4
TILE = 160  # px: the longer side of a tile in the grid
GAP = 4


@dataclass(frozen=True)
class SaliencyCase:
    """What the report shows of one saliency case.

    Attributes:
        setting: the frame's ``_setting``.
        model: model card name.
        dataset: dataset card name.
        value: the case's primary value (mean attentive diffusion).
        images: ``(image key, label, overlay path, heat-map path)`` of the pictures found.
        notes: what is missing, one sentence each.
    """

    setting: str
    model: str
    dataset: str
    value: float
    images: tuple[tuple[str, str, Path | None, Path | None], ...] = ()
    notes: tuple[str, ...] = field(default=())


def _results_root(record_path: Path) -> Path:
    # records live at <results>/<suite>/<case folder>/<record>.json
    return record_path.parent.parent.parent


def saliency_cases(frame: pd.DataFrame) -> list[SaliencyCase]:
    """The saliency cases of ``frame`` with their pictures on disk, sorted."""
    rows = frame[frame["protocol"] == PROTOCOL]
    cases = []
    for _, row in rows.sort_values(["_setting", "dataset", "model"]).iterrows():
        cases.append(_case(row))
    return cases


def _case(row: pd.Series) -> SaliencyCase:
    base = {
        "setting": str(row["_setting"]),
        "model": str(row["model"]),
        "dataset": str(row["dataset"]),
        "value": float(row["primary_value"]),
    }
    path = text_or_none(row.get("path"))
    if path is None:
        return SaliencyCase(**base, notes=("its record file is not known",))
    try:
        record = load_record(Path(path))
    except RecordError as exc:
        return SaliencyCase(**base, notes=(f"its record could not be read ({exc})",))
    root = _results_root(Path(path))
    split = str(record.details.get("split", "test"))
    images, notes = [], []
    for entry in list(record.details.get("images", []))[:MAX_IMAGES]:
        key = f"{split}_{entry.get('index', '?')}"
        found: list[Path | None] = []
        for kind in ("overlay", "heatmap"):
            relative = entry.get(kind)
            if relative is None:
                found.append(None)
                continue
            picture = root / str(relative)
            if picture.is_file():
                found.append(picture)
            else:
                found.append(None)
                notes.append(f"{kind} of image {key} is missing (`{relative}`)")
        if entry.get("overlay") is None and entry.get("heatmap") is None:
            notes.append(f"image {key} has no saved pictures")
        if any(p is not None for p in found):
            images.append((key, str(entry.get("label", "")), found[0], found[1]))
    if not record.details.get("images"):
        notes.append("its record lists no images")
    return SaliencyCase(**base, images=tuple(images), notes=tuple(notes))


def grid_png(images: tuple[tuple[str, str, Path | None, Path | None], ...]) -> bytes:
    """Overlays (top row) and heat maps (bottom row) side by side on white, as PNG bytes."""
    from PIL import Image

    def tile(path: Path | None) -> Image.Image | None:
        if path is None:
            return None
        with Image.open(path) as opened:
            picture = opened.convert("RGB")
        scale = TILE / max(picture.size)
        size = (max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))
        return picture.resize(size, Image.Resampling.LANCZOS)

    rows = [[tile(over) for _, _, over, _ in images], [tile(heat) for _, _, _, heat in images]]
    rows = [row for row in rows if any(t is not None for t in row)]
    width = len(images) * (TILE + GAP) + GAP
    canvas = Image.new("RGB", (width, len(rows) * (TILE + GAP) + GAP), "white")
    for r, row in enumerate(rows):
        for c, picture in enumerate(row):
            if picture is not None:
                canvas.paste(picture, (GAP + c * (TILE + GAP), GAP + r * (TILE + GAP)))
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    return compact_png(buffer.getvalue())


def plan_saliency_figures(frame: pd.DataFrame, stem: str) -> list[AnalysisFigure]:
    """One grid per saliency case with at least one picture found."""
    figures = []
    suffixes = {setting: suffix for setting, suffix, _ in setting_groups(frame)}
    for case in saliency_cases(frame):
        if not case.images:
            continue
        name = (
            f"{stem}-saliency{suffixes[case.setting]}-{_slug(case.dataset)}-{_slug(case.model)}.png"
        )
        figures.append(
            AnalysisFigure(
                name,
                PROTOCOL,
                f"Occlusion saliency of {case.model} on {case.dataset}",
                lambda images=case.images: grid_png(images),
                ("saliency", case.setting, case.dataset, case.model),
            )
        )
    return figures


def saliency_section(frame: pd.DataFrame, links: dict[tuple[str, ...], str]) -> str:
    """The ``## Saliency overlays`` section; empty without saliency records."""
    cases = saliency_cases(frame)
    if not cases:
        return ""
    parts = [
        "## Saliency overlays",
        "Occlusion saliency maps (SSL_medicalimaging's procedure, see docs/analyses-images.md): "
        "top row, the map in jet over the image in grey; bottom row, the map alone; at most "
        f"{MAX_IMAGES} images per case, from the pictures the case saved next to its records.",
    ]
    multi = frame["_setting"].nunique() > 1
    last: tuple[str, str] | None = None
    for case in cases:
        if (case.setting, case.dataset) != last:
            where = f" ({case.setting})" if multi else ""
            parts.append(f"### `{case.dataset}`{where}")
            last = (case.setting, case.dataset)
        shown = ", ".join(
            f"{key} (label {label})" if label else key for key, label, _, _ in case.images
        )
        text = f"`{case.model}`: attentive diffusion {fmt(case.value)}%"
        text += f"; images {shown}." if shown else "."
        if case.notes:
            text += " Note: " + "; ".join(case.notes) + "."
        parts.append(text)
        link = links.get(("saliency", case.setting, case.dataset, case.model))
        if link is not None:
            parts.append(link)
    return "\n\n".join(parts)
