"""Generate the paper suites' expected files from the committed transcriptions of published tables.

Each CSV in this folder transcribes one published table, one number a row, with the
study's own row label and column header so a reviewer can check it against the source:

* ``ssl_medicalimaging_full_data.csv``: jonahanton/SSL_medicalimaging, ``results/full_data.csv``
  (few-shot accuracy ± 95% CI, linear and fine-tune accuracy, multi-view invariance);
* ``medical_transformers_table1.csv``: ChrisMats/medical_transformers, ``misc/table1.png``
  (fine-tuning, median ± std over 5 runs);
* ``revisiting_transfer_auc_mean.csv``: DovileDo/revisiting-transfer, ``results/AUC_mean.csv``
  (AUC mean ± std over 5 folds; the ``suite`` column splits plain fine-tuning from
  freeze-then-fine-tune);
* ``cats_scans_auc_folds_means_std.csv``: vcheplygina/cats-scans,
  ``results/auc_folds_means_std.csv`` (AUC mean ± std over 5 folds);
* ``transferability_aucs_dataset.csv``: DovileDo/transferability-in-medical-imaging (formerly
  DovileDo/transferability), ``results/AUCs_dataset.csv`` row ``imagenet`` (ImageNet
  ResNet-18 fine-tuned on MedMNIST+ 224 px: one run's test AUC per target, no spread);
* ``vtab_results.csv``: google-research/task_adaptation, ``docs/data/results.csv``
  (Sup-100% ResNet-50 on Camelyon and Retinopathy, VTAB-1k and full);
* ``paper_readme.csv``: the numbers the ssl-transfer and SSL_medicalimaging READMEs quote
  that no other table gives (a ``repository`` column names each row's README).

A spread published as ``std`` over k folds or runs is written as ``{kind: std, value, runs:
k}``: the published mean's standard error is ``std / sqrt(k)`` (the published-value rule's
reading), and one reproduction (one fold, one run) spreads like one of the study's runs,
``std`` itself. Where a study computed the std with ``ddof=0`` (cats-scans, numpy), the
transcription holds the ``ddof=1`` std of the same per-fold values, noted in the row.

A table with no ``commit`` is pending: it is transcribed but writes no expected file until
the commit of the transcribed file is known.

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
import functools
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

import harness.data.readers.ddti  # registers ddti_xml until readers/ imports it
import harness.data.readers.mrnet  # registers mrnet_slices, likewise
import harness.data.readers.pcam_png  # registers pcam_png_names, likewise
import harness.data.split_folds  # noqa: F401  (registers fold_files until the registry does)
from harness.baselines.expected import EXPECTED_DIR, SCHEMA_VERSION, Expectation
from harness.baselines.published import PUBLISHED_RULE
from harness.config.cards import get_dataset_card
from harness.config.suites import load_suite
from harness.protocols.registry import get_protocol, presets_of

HERE = Path(__file__).resolve().parent


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
        other_presets: protocol -> further presets whose records are checked against the
            same numbers (the study's grid, where ``presets`` runs its selected point).
        settings: protocol -> a one-line description of the published setting.
        note: added to every entry's source, if not empty.
        n_way: dataset -> the few-shot ways of its setting text.
        select: keep only rows whose ``suite`` column is this suite (one transcription
            feeding several suites).
        commits: repository -> commit, for rows naming their own ``repository``.
        header: more header comment lines of the expected file.
    """

    suite: str
    transcription: str
    repository: str
    commit: str
    file: str
    paper: str
    presets: dict[str, str]
    settings: dict[str, str]
    other_presets: dict[str, tuple[str, ...]] = field(default_factory=dict)
    note: str = ""
    n_way: dict[str, int] = field(default_factory=dict)
    select: bool = False
    commits: dict[str, str] = field(default_factory=dict)
    header: tuple[str, ...] = ()


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
        suite="medical-transformers",
        transcription="medical_transformers_table1.csv",
        repository="ChrisMats/medical_transformers",
        commit="19323dd01a92acccfd9eb3878a88c84417e9a272",
        file="misc/table1.png",
        paper="Matsoukas et al., Is it Time to Replace CNNs with Transformers for Medical "
        "Images?, ICCV-W CVAMD 2021, table 1",
        presets={"finetune": "medical-transformers"},
        settings={
            "finetune": "full fine-tuning, Adam (LR finder), wd 1e-5, batch 64, 25 epochs, "
            "warm-up then cosine decay; median ± std over 5 runs",
        },
    ),
)

RT_FINETUNE = (
    "Keras ResNet-50 (avg pool) + Dropout 0.5 + softmax, Adam 1e-5, batch 128, up to 200 "
    "epochs, EarlyStopping(val_loss, patience 30), best val-loss weights, rotation/shift/"
    "shear/zoom 0.1 augmentation; one case is one fold (the card's fold 1), the value the "
    "mean over the study's 5 folds"
)
RT_HEADER = (
    "# One case runs one fold (the card's, fold 1 as the README's --k 1); the value is the "
    "study's 5-fold mean,",
    "# so se_published = std/sqrt(5) and se_reproduction = std (one fold spreads like one of "
    "the study's folds).",
)
MORE_TABLES = (
    PublishedTable(
        suite="revisiting-transfer",
        transcription="revisiting_transfer_auc_mean.csv",
        repository="DovileDo/revisiting-transfer",
        commit="54853c33571f37ab23ad1fc049b4c89beff418c3",
        file="results/AUC_mean.csv",
        paper="Juodelyte et al., Revisiting Hidden Representations in Transfer Learning for "
        "Medical Imaging, TMLR 2023",
        presets={"finetune": "revisiting-transfer"},
        settings={"finetune": "fine-tuning.py without --freeze (freezeFalse): " + RT_FINETUNE},
        select=True,
        header=RT_HEADER,
    ),
    PublishedTable(
        suite="revisiting-transfer-freeze",
        transcription="revisiting_transfer_auc_mean.csv",
        repository="DovileDo/revisiting-transfer",
        commit="54853c33571f37ab23ad1fc049b4c89beff418c3",
        file="results/AUC_mean.csv",
        paper="Juodelyte et al., Revisiting Hidden Representations in Transfer Learning for "
        "Medical Imaging, TMLR 2023",
        presets={"finetune": "revisiting-transfer-freeze"},
        settings={
            "finetune": "fine-tuning.py with its freeze stage (freezeTrue: the head trained "
            "on the frozen base with Adam 1e-3, EarlyStopping(val_acc, patience 10), then): "
            + RT_FINETUNE
        },
        select=True,
        header=RT_HEADER,
    ),
    PublishedTable(
        suite="cats-scans",
        transcription="cats_scans_auc_folds_means_std.csv",
        repository="vcheplygina/cats-scans",
        commit="9bc5d8a8e9024a08e954a708b5a18f487d675b94",
        file="results/auc_folds_means_std.csv",
        paper="Cheplygina et al., cats-scans: transfer from natural and medical sources "
        "(vcheplygina/cats-scans)",
        presets={"finetune": "cats-scans"},
        settings={
            "finetune": "Keras ResNet-50 + Dropout 0.5, Adam 1e-5, batch 128, 50 epochs, "
            "balanced class weights; StratifiedKFold(5, shuffle, random_state=2), AUC "
            "(weighted OvR) on each held-out fold; mean ± std over the 5 folds"
        },
        header=(
            "# One case runs all 5 folds and reports their mean, compared with the study's "
            "5-fold mean; se_reproduction",
            "# is taken as one fold's std (wide for a 5-fold mean).",
        ),
    ),
    PublishedTable(
        suite="transferability",
        transcription="transferability_aucs_dataset.csv",
        repository="DovileDo/transferability-in-medical-imaging",
        commit="7e308c4998e98d5781fbac5cdde2fa7c0002977d",
        file="results/AUCs_dataset.csv",
        paper="Juodelyte et al., On dataset transferability in medical image classification, "
        "arXiv:2412.20172",
        presets={"finetune": "medmnist-transferability"},
        other_presets={"finetune": ("medmnist-transferability-grid",)},
        settings={
            "finetune": "src/fine-tuning.py --source_flag imagenet: torchvision ImageNet "
            "ResNet-18 + Dropout 0.5, SGD, cosine over 200 epochs, EarlyStopping(val AUC, "
            "patience 50), best val-AUC checkpoint; MedMNIST+ 224 px, trained on fold 1 of "
            "the study's subsets (100 x classes train, 25 x classes val images); the test AUC "
            "(MedMNIST getAUC: macro one-vs-rest) of the one run with the lowest val loss in "
            "a 120-point grid (batch x lr x momentum x wd, finetuned_AUCs.ipynb)"
        },
        note="transcribed at HEAD 7e308c4; the file last changed at bf40575",
        header=(
            "# The value is the test AUC of the one run the study's grid selected (no spread "
            "published: se_published 0);",
            "# preset medmnist-transferability trains that run's point, "
            "medmnist-transferability-grid the whole grid; both are checked against it.",
            "# The suite trains on the study's fold-1 subsets (split rule per_class_subsets); "
            "expected values stay optional (see the suite).",
        ),
    ),
    PublishedTable(
        suite="vtab",
        transcription="vtab_results.csv",
        repository="google-research/task_adaptation",
        commit="d7630d3c43ba052b5a35546b312d9454a9f2c96b",
        file="docs/data/results.csv",
        paper="Zhai et al., A Large-scale Study of Representation Learning with the Visual "
        "Task Adaptation Benchmark, arXiv:1910.04867",
        presets={"finetune": "vtab"},
        settings={
            "finetune": "VTAB fine-tuning of the whole network (SGD momentum 0.9, batch 512, "
            "224 px, lr and steps from its 4-run sweep), top-1 accuracy on the test split"
        },
    ),
    PublishedTable(
        suite="paper-readme",
        transcription="paper_readme.csv",
        repository="",
        commit="",
        file="readme.md",
        paper="Ericsson et al., How Well Do Self-Supervised Models Transfer?, CVPR 2021; "
        "Anton et al., J. Imaging 2022",
        presets={
            "linear": "ssl-transfer",
            "finetune": "ssl-transfer",
            "fewshot": "ssl-transfer",
            "saliency": "ssl-medicalimaging",
        },
        settings={
            "linear": "ssl-transfer linear.py: L2 logistic regression on frozen features",
            "finetune": "ssl-transfer finetune.py: 5000 steps, SGD nesterov, cosine, lr/wd grid",
            "fewshot": "ssl-transfer few_shot.py: ProtoNet on frozen features, 600 episodes",
            "saliency": "SSL_medicalimaging saliency.py: occlusion saliency of one sample "
            "image, attentive diffusion (% of the map above its mean)",
        },
        commits={
            "linusericsson/ssl-transfer": "416913f6ab567ac13e974cacc794e20c8be1c607",
            "jonahanton/SSL_medicalimaging": "77fceefdc4ac6bab2d3569b0ae492e582d6a421d",
        },
        note="README text; the ssl-transfer README last changed at ad18d6e",
        header=(
            "# Out of scope: ssl-transfer's VOC detection number (82.01 AP50, BYOL frozen): "
            "the harness has no detection protocol.",
        ),
    ),
)
ALL_TABLES = TABLES + MORE_TABLES


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


@functools.cache
def _split_name(suite: str) -> str:
    """The suffix a suite's split override gives its dataset names ("" without one)."""
    return load_suite(suite).split_name


def entry(table: PublishedTable, row: dict[str, str]) -> Expectation:
    """The expected entry of one transcribed number."""
    protocol, dataset = row["protocol"], row["dataset"]
    interval = _interval(row)
    repository = row.get("repository") or table.repository
    source: dict[str, Any] = {
        "kind": "published",
        "repository": repository,
        "commit": table.commits.get(repository, table.commit),
        "file": table.file,
        "row": row["row"],
        "column": row["column"],
    }
    if interval:
        source["interval"] = interval
    if row["interval_column"]:
        source["interval_column"] = row["interval_column"]
    if row.get("published"):
        source["published"] = row["published"]
    setting = table.settings[protocol].format(n_way=table.n_way.get(dataset, 2))
    source.update(setting=setting, paper=table.paper)
    notes = [n for n in (row["note"], table.note) if n]
    if notes:
        source["note"] = "; ".join(notes)
    split_name = _split_name(table.suite)
    case_dataset = f"{dataset}_{split_name}" if split_name else dataset
    return Expectation(
        case_id=f"{protocol}/{case_dataset}/{row['model']}",
        profile="paper",
        protocol_version=get_protocol(protocol).version,
        dataset_version=get_dataset_card(dataset).version,
        metric=row.get("metric") or _metric(protocol, dataset),
        value=float(row["value"]),
        tolerance=PUBLISHED_RULE.floor,
        tolerance_components=PUBLISHED_RULE.entry_components(interval),
        source=source,
        preset=table.presets[protocol],
        preset_version=_preset_version(protocol, table.presets[protocol]),
        other_presets=tuple(
            (name, _preset_version(protocol, name))
            for name in table.other_presets.get(protocol, ())
        ),
    )


def _preset_version(protocol: str, preset: str) -> int:
    """The registered version of a preset; 1 for a planned preset not registered yet."""
    registered = presets_of(protocol).get(preset)
    return 1 if registered is None else registered.version


def read_rows(table: PublishedTable) -> list[dict[str, str]]:
    """The transcription's rows (only the table's suite's with ``select``), in file order."""
    with (HERE / table.transcription).open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    return [r for r in rows if not table.select or r["suite"] == table.suite]


def pending(table: PublishedTable) -> bool:
    """True when the transcribed file's commit is not known yet (no expected file is written)."""
    return not (table.commit or table.commits)


def covered(row: dict[str, str]) -> bool:
    """True when the row names a model and a dataset (an entry); else its note says why not."""
    return bool(row["model"] and row["dataset"])


def render(table: PublishedTable) -> str:
    """The expected file's text for one published table."""
    entries = [entry(table, row) for row in read_rows(table) if covered(row)]
    ids = [e.case_id for e in entries]
    repeated = sorted({i for i in ids if ids.count(i) > 1})
    if repeated:
        raise ValueError(f"{table.transcription}: case(s) {', '.join(repeated)} transcribed twice")
    where = (
        f"{table.repository}@{table.commit[:7]}:{table.file}"
        if table.repository
        else ", ".join(
            f"{repo}@{commit[:7]}:{table.file}" for repo, commit in table.commits.items()
        )
    )
    header = (
        f"# Expected values of suite {table.suite!r}: published numbers of {where}.\n"
        f"# Generated by benchmarks/expected/published/make_expected.py from "
        f"{table.transcription}; do not edit by hand.\n"
        f"# Tolerances: {PUBLISHED_RULE.describe()}; 'tolerance' is the floor.\n"
        + "".join(f"{line}\n" for line in table.header)
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
    for table in ALL_TABLES:
        if pending(table):
            print(f"{table.transcription}: pending (no commit of {table.file} known); no file")
            continue
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
