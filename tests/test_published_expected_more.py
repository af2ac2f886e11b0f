"""The expected files generated from revisiting-transfer, cats-scans, VTAB, the READMEs and
DovileDo/transferability-in-medical-imaging: each entry cites its source row, names a case
whose model, dataset and protocol exist, a preset that exists (or is planned), and the
published-v1 tolerance rule with the fold / run spread read as documented in make_expected.py.

The miniature-layout tests of the new dataset cards and of the ``fold_files`` split rule
are in ``tests/test_dataset_zoo_rt.py``.
"""

from __future__ import annotations

import csv
import importlib.util
import math
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest

import harness.data.readers.ddti  # registers ddti_xml until readers/ imports it
import harness.data.readers.mrnet  # registers mrnet_slices, likewise
import harness.data.readers.pcam_png  # registers pcam_png_names, likewise
import harness.data.split_folds  # noqa: F401  (registers fold_files until the registry does)
from harness.baselines.expected import EXPECTED_DIR, load_expected
from harness.baselines.published import PUBLISHED_RULE, published_se
from harness.config.cards import get_dataset_card, get_model_card
from harness.config.suites import load_suite
from harness.protocols.registry import get_protocol, presets_of

GENERATOR = EXPECTED_DIR / "published" / "make_expected.py"
# presets the entries name that are not registered yet: (protocol, name) -> version
PLANNED_PRESETS: dict[tuple[str, str], int] = {}
# suites another change must extend before their entries are all cases (see the report)
PERCENT_METRICS = {"attentive_diffusion"}


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_expected_more", GENERATOR)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


GEN = _generator()
WRITTEN = [t for t in GEN.MORE_TABLES if not GEN.pending(t)]


def _rows(table: object) -> list[dict[str, str]]:
    with (GENERATOR.parent / table.transcription).open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def _entries(table: object) -> dict:
    return load_expected(EXPECTED_DIR / f"{table.suite}.yaml", table.suite).entries


@pytest.mark.parametrize("table", WRITTEN, ids=lambda t: t.suite)
def test_generator_reproduces_the_committed_file(table: object) -> None:
    assert GEN.render(table) == GEN.target(table).read_text(encoding="utf-8")


@pytest.mark.parametrize("table", WRITTEN, ids=lambda t: t.suite)
def test_every_entry_cites_its_source_row_and_names_existing_cards(table: object) -> None:
    entries = _entries(table)
    covered = [r for r in GEN.read_rows(table) if GEN.covered(r)]
    assert entries and len(entries) == len(covered)
    # a suite's own dataset cards first: a split override names them <dataset>_<split>
    suite_cards = {c.dataset.name: c.dataset for c in load_suite(table.suite).cases()}
    for case_id, entry in entries.items():
        protocol, dataset, model = case_id.split("/")
        source = entry.source
        assert source["kind"] == "published" and source["file"] == table.file, case_id
        assert re.fullmatch(r"[0-9a-f]{40}", source["commit"]), case_id
        assert source["row"] and source["column"] and source["published"], case_id
        assert source["repository"] in (table.repository, *table.commits), case_id
        get_protocol(protocol)
        card = suite_cards.get(dataset) or get_dataset_card(dataset)
        assert card.version == entry.dataset_version, case_id
        assert get_model_card(model).name == model
        assert entry.profile == "paper" and entry.protocol_version == get_protocol(protocol).version
        registered = presets_of(protocol).get(entry.preset)
        version = (
            registered.version if registered else PLANNED_PRESETS.get((protocol, entry.preset))
        )
        assert version == entry.preset_version, f"{case_id}: preset {entry.preset}"
        for name, other_version in entry.other_presets:
            assert presets_of(protocol)[name].version == other_version, f"{case_id}: {name}"


@pytest.mark.parametrize("table", WRITTEN, ids=lambda t: t.suite)
def test_tolerances_follow_the_published_rule(table: object) -> None:
    for case_id, entry in _entries(table).items():
        interval = entry.source.get("interval")
        assert entry.tolerance == PUBLISHED_RULE.floor
        assert entry.tolerance_components["rule"].startswith("published-v1")
        se, _ = published_se(interval)
        assert entry.tolerance_components["se_published"] == round(se, 6), case_id
        if interval and interval["kind"] == "std":  # fold / run spread of the study
            assert interval["runs"] == 5 and math.isclose(se, interval["value"] / math.sqrt(5))
            # a bare record (one fold, no interval of its own) spreads like one study fold
            tolerance, note = PUBLISHED_RULE.tolerance({}, entry.metric, entry.value, interval)
            want = max(PUBLISHED_RULE.floor, 3 * math.hypot(se, interval["value"]))
            assert tolerance == math.ceil(want * 1e4 - 1e-9) / 1e4, case_id
            assert "published per-run std" in note


@pytest.mark.parametrize("table", WRITTEN, ids=lambda t: t.suite)
def test_every_entry_is_a_case_of_its_suite(table: object) -> None:
    cases = {case.case_id for case in load_suite(table.suite).cases()}
    assert sorted(set(_entries(table)) - cases) == []


@pytest.mark.parametrize("table", GEN.MORE_TABLES, ids=lambda t: t.suite)
def test_transcriptions_are_unique_and_explain_every_uncovered_number(table: object) -> None:
    rows = GEN.read_rows(table)
    assert rows
    keys = [(r.get("repository", ""), r["row"], r["column"]) for r in rows]
    assert len(keys) == len(set(keys))
    assert all(r["note"] for r in rows if not GEN.covered(r))
    for row in rows:
        high = 100.0 if row.get("metric") in PERCENT_METRICS else 1.0
        assert 0.0 <= float(row["value"]) <= high, row
        if GEN.covered(row):  # the cards a case would need exist
            get_dataset_card(row["dataset"])
            get_model_card(row["model"])


def test_revisiting_transfer_settings_map_to_their_suites() -> None:
    """freezeFalse rows (and random init) -> revisiting-transfer, freezeTrue -> -freeze."""
    rows = _rows(next(t for t in GEN.MORE_TABLES if t.suite == "revisiting-transfer"))
    assert len(rows) == 35  # 7 targets x (ImageNet, RadImageNet) x 2 settings + 7 random
    for row in rows:
        freeze = "freezeTrue" in row["row"]
        assert row["suite"] == ("revisiting-transfer-freeze" if freeze else "revisiting-transfer")
    plain = _entries(GEN.MORE_TABLES[0])
    freeze = _entries(GEN.MORE_TABLES[1])
    assert (len(plain), len(freeze)) == (21, 14)  # every target has a card
    breast = plain["finetune/breast_ultrasound_rt/resnet50.tv_in1k"]
    # the study's number is Keras' AUC(): the presets (version 2) record it as roc_auc_keras
    assert (breast.value, breast.metric, breast.preset) == (
        0.905,
        "roc_auc_keras",
        "revisiting-transfer",
    )
    assert breast.preset_version == 2
    assert breast.source["interval"] == {"kind": "std", "value": 0.0383, "runs": 5}
    radnet = freeze["finetune/breast_ultrasound_rt/keras_resnet50.radimagenet"]
    assert (radnet.value, radnet.preset) == (0.724, "revisiting-transfer-freeze")


def test_cats_scans_and_vtab_values() -> None:
    cats = load_expected(EXPECTED_DIR / "cats-scans.yaml", "cats-scans").entries
    isic = cats["finetune/isic2018/resnet50.tv_in1k"]
    assert isic.value == 0.9463 and isic.source["interval"]["value"] == 0.0042  # ddof-1 std
    vtab = load_expected(EXPECTED_DIR / "vtab.yaml", "vtab").entries
    assert vtab["finetune/pcam/resnet50.tv_in1k"].value == 0.8393
    assert vtab["finetune/eyepacs_vtab/resnet50.tv_in1k"].metric == "accuracy"
    one_k = {case: vtab[case].value for case in vtab if "vtab1k" in case}
    assert one_k == {
        "finetune/pcam_vtab1k/resnet50.tv_in1k": 0.8061,
        "finetune/eyepacs_vtab1k/resnet50.tv_in1k": 0.732,
    }  # every VTAB-1k number of the Sup-100% row has its case
    readme = load_expected(EXPECTED_DIR / "paper-readme.yaml", "paper-readme").entries
    assert readme["saliency/chexpert_ssl_medical/resnet50.moco_v2"].value == 48.64
    assert readme["linear/cifar10/resnet50.tv_in1k"].source["commit"].startswith("416913f")
    assert "VOC detection" in (EXPECTED_DIR / "paper-readme.yaml").read_text(encoding="utf-8")


def test_transferability_imagenet_row_at_224_px() -> None:
    """Row ``imagenet`` of AUCs_dataset.csv at 7e308c4, as printed (full precision); each
    number is one run's test AUC (the grid point with the lowest val loss), so no spread."""
    table = next(t for t in GEN.MORE_TABLES if t.suite == "transferability")
    assert not GEN.pending(table) and table.commit.startswith("7e308c4")
    assert table.repository == "DovileDo/transferability-in-medical-imaging"
    rows = _rows(table)
    assert len(rows) == 12 and all(GEN.covered(r) for r in rows)
    assert all(r["row"] == "imagenet" and r["dataset"] == f"{r['column']}_224" for r in rows)
    assert all(r["value"] == r["published"] and not r["interval_kind"] for r in rows)
    entries = _entries(table)
    blood = entries["finetune/bloodmnist_224_fold1/resnet18.tv_in1k"]
    assert (blood.value, blood.metric, blood.preset) == (
        0.9984533762023934,
        "roc_auc",
        "medmnist-transferability",
    )
    # the selected point's run and the whole grid are both checked against the number
    assert blood.presets == (("medmnist-transferability", 2), ("medmnist-transferability-grid", 1))
    assert entries["finetune/chestmnist_224_fold1/resnet18.tv_in1k"].value == 0.6858346232118053
    assert "interval" not in blood.source
    suite = load_suite("transferability")
    # the study's fold-1 subsets (100 x classes train images), by the suite's split override;
    # one run per target and no published spread: optional
    assert (suite.split_name, suite.split) == ("fold1", {"rule": "per_class_subsets", "fold": 1})
    assert {c.case_id for c in suite.cases()} == set(entries)
    assert not suite.expected_required
    assert dict(suite.presets) == {"finetune": "medmnist-transferability"}


def test_generated_files_are_listed_in_the_generator(tmp_path: Path) -> None:
    """Every expected file this generator owns comes from one of its tables."""
    names = {f"{t.suite}.yaml" for t in GEN.ALL_TABLES if not GEN.pending(t)}
    for name in ("revisiting-transfer", "revisiting-transfer-freeze", "cats-scans", "vtab",
                 "paper-readme", "transferability"):  # fmt: skip
        assert f"{name}.yaml" in names and (EXPECTED_DIR / f"{name}.yaml").is_file()
