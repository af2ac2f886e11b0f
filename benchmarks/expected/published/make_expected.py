"""Generate the paper suites' expected files from the committed transcriptions of published tables.

Each CSV in this folder transcribes one published table, one number a row, with the
study's own row label and column header so a reviewer can check it against the source:

* ``ssl_medicalimaging_full_data.csv``: jonahanton/SSL_medicalimaging, ``results/full_data.csv``
  (few-shot accuracy ± 95% CI, linear and fine-tune accuracy, multi-view invariance);
* ``feature_reuse_table1.csv``: ChrisMats/medical_transformers, ``misc/table1.png``
  (fine-tuning, median ± std over 5 runs).

A row whose ``model`` is empty has no model card here and gives no entry (its ``note``
says why). Each entry records its source, its published interval, the preset that
should reproduce it and the protocol and dataset versions of the current code; its
tolerance is the published-value rule's (``harness/baselines/published.py``), computed
at check time, with the rule's floor stored as ``tolerance``.

    .venv/bin/python benchmarks/expected/published/make_expected.py          # write
    .venv/bin/python benchmarks/expected/published/make_expected.py --check  # compare only
"""

from __future__ import annotations

import argparse
import csv
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from harness.baselines.expected import EXPECTED_DIR, SCHEMA_VERSION, Expectation
from harness.baselines.published import PUBLISHED_RULE
from harness.config.cards import get_dataset_card
from harness.protocols.registry import get_protocol

HERE = Path(__file__).resolve().parent
PRESET_VERSION = 1  # the version of every preset the entries name


@dataclass(frozen=True)
class PublishedTable:
    """One published table and the suite whose expected values it gives.

    Attributes:
        suite: the suite.
        transcription: the CSV in this folder.
        repository: ``owner/name`` of the study's repository.
        commit: the commit whose ``file`` was transcribed.
        file: the table's path in the repository.
        paper: the citation.
        presets: protocol -> the preset that reproduces the study's procedure.
        settings: protocol -> a one-line description of the published setting.
        note: added to every entry's source, if not empty.
    """

    suite: str
    transcription: str
    repository: str
    commit: str
    file: str
    paper: str
    presets: dict[str, str]
    settings: dict[str, str]
    note: str = ""
    n_way: dict[str, int] = field(default_factory=dict)


SSL_MEDICAL_FEWSHOT = (
    "ProtoNet on frozen features, {n_way}-way 20-shot, 15 queries, 600 episodes, train+test "
    "pooled; interval 1.96*std/sqrt(600)"
)
TABLES = (
    PublishedTable(
        suite="paper-medical",
        transcription="ssl_medicalimaging_full_data.csv",
        repository="jonahanton/SSL_medicalimaging",
        commit="9768f3f14439529fe3c6fee9b87e37c4f25c42b0",
        file="results/full_data.csv",
        paper="Anton et al., How Well Do Self-Supervised Models Transfer to Medical Imaging?, "
        "J. Imaging 2022",
        presets={p: "ssl-medicalimaging" for p in ("linear", "fewshot", "finetune", "multiview")},
        settings={
            "fewshot": SSL_MEDICAL_FEWSHOT,
            "linear": "L2 logistic regression on frozen features, C = 1/logspace(-6, 5, 45) "
            "chosen on 20% of train, refit on train+val",
            "finetune": "5000 steps, batch 64, SGD nesterov 0.9, lr 1e-2, wd 1e-8, cosine "
            "schedule, early stopping every 200 steps with patience 3",
            "multiview": "mean cosine similarity of whitened features of paired views "
            "(CheXpert lateral/frontal of one study; EyePACS left/right eye of equal grade)",
        },
        note="the last commit to change the file (the same at HEAD 77fceef); every transcribed "
        "column is identical at 272b34c",
        n_way={"eyepacs": 5, "chestxray14_7class": 5},
    ),
    PublishedTable(
        suite="feature-reuse",
        transcription="feature_reuse_table1.csv",
        repository="ChrisMats/medical_transformers",
        commit="19323dd01a92acccfd9eb3878a88c84417e9a272",
        file="misc/table1.png",
        paper="Matsoukas et al., Is it Time to Replace CNNs with Transformers for Medical "
        "Images?, ICCV-W CVAMD 2021, table 1",
        presets={"finetune": "feature-reuse"},
        settings={
            "finetune": "full fine-tuning, Adam (LR finder), wd 1e-5, batch 64, warm-up then "
            "plateau decay; median ± std over 5 runs",
        },
    ),
)


def _metric(protocol: str, dataset: str) -> str:
    """The primary metric a case records: the protocol's own, else the dataset card's."""
    return get_protocol(protocol).primary_metric or get_dataset_card(dataset).primary_metric


def _interval(row: dict[str, str]) -> dict[str, Any] | None:
    if not row["interval_kind"]:
        return None
    interval: dict[str, Any] = {"kind": row["interval_kind"], "value": float(row["interval"])}
    if row["runs"]:
        interval["runs"] = int(row["runs"])
    if row["statistic"]:
        interval["statistic"] = row["statistic"]
    return interval


def entry(table: PublishedTable, row: dict[str, str]) -> Expectation:
    """The expected entry of one transcribed number."""
    protocol, dataset = row["protocol"], row["dataset"]
    interval = _interval(row)
    source: dict[str, Any] = {
        "kind": "published",
        "repository": table.repository,
        "commit": table.commit,
        "file": table.file,
        "row": row["row"],
        "column": row["column"],
    }
    if interval:
        source["interval"] = interval
    if row["interval_column"]:
        source["interval_column"] = row["interval_column"]
    setting = table.settings[protocol].format(n_way=table.n_way.get(dataset, 2))
    source.update(setting=setting, paper=table.paper)
    notes = [n for n in (row["note"], table.note) if n]
    if notes:
        source["note"] = "; ".join(notes)
    return Expectation(
        case_id=f"{protocol}/{dataset}/{row['model']}",
        profile="paper",
        protocol_version=get_protocol(protocol).version,
        dataset_version=get_dataset_card(dataset).version,
        metric=_metric(protocol, dataset),
        value=float(row["value"]),
        tolerance=PUBLISHED_RULE.floor,
        tolerance_components=PUBLISHED_RULE.entry_components(interval),
        source=source,
        preset=table.presets[protocol],
        preset_version=PRESET_VERSION,
    )


def read_rows(table: PublishedTable) -> list[dict[str, str]]:
    """The transcription's rows, in file order."""
    with (HERE / table.transcription).open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def render(table: PublishedTable) -> str:
    """The expected file's text for one published table."""
    entries = [entry(table, row) for row in read_rows(table) if row["model"]]
    ids = [e.case_id for e in entries]
    repeated = sorted({i for i in ids if ids.count(i) > 1})
    if repeated:
        raise ValueError(f"{table.transcription}: case(s) {', '.join(repeated)} transcribed twice")
    header = (
        f"# Expected values of suite {table.suite!r}: published numbers of "
        f"{table.repository}@{table.commit[:7]}:{table.file}.\n"
        f"# Generated by benchmarks/expected/published/make_expected.py from "
        f"{table.transcription}; do not edit by hand.\n"
        f"# Tolerances: {PUBLISHED_RULE.describe()}; 'tolerance' is the floor.\n"
    )
    body = {
        "schema_version": SCHEMA_VERSION,
        "suite": table.suite,
        "device": "cpu",
        "cases": {e.case_id: e.to_yaml_dict() for e in sorted(entries, key=lambda e: e.case_id)},
    }
    return header + yaml.safe_dump(body, sort_keys=False, width=100, allow_unicode=True)


def target(table: PublishedTable) -> Path:
    """Where the suite's expected file lives."""
    return EXPECTED_DIR / f"{table.suite}.yaml"


def main(argv: list[str] | None = None) -> int:
    """Write (or with ``--check`` compare) every generated expected file; 1 when one differs."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare, write nothing")
    args = parser.parse_args(argv)
    stale = []
    for table in TABLES:
        text, path = render(table), target(table)
        if args.check:
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                stale.append(str(path))
        else:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path}")
    for path in stale:
        print(f"{path} differs from its transcription: run make_expected.py", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
