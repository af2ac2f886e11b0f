"""``medxfer prepare NAME --root PATH`` on miniature real layouts, then ``pytest benchmarks
-k chexpert`` as a user runs it: only CheXpert cases, and they run."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_dataset_zoo import write_chexpert, write_nih

from harness.cli import main
from harness.config.cards import get_dataset_card
from harness.config.paths import PROJECT_ROOT
from harness.data.acquire import LayoutReport, check_layout
from harness.data.pipeline import data_root

PYTEST = (sys.executable, "-m", "pytest", "-p", "no:cacheprovider")


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MEDXFER_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MEDXFER_CARDS", raising=False)
    return tmp_path / "home"


def test_prepare_root_links_the_users_copy_and_decodes_it(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "downloads" / "chexpert"
    write_chexpert(source)
    assert main(["prepare", "chexpert", "--root", str(source)]) == 0
    out = capsys.readouterr().out
    card = get_dataset_card("chexpert")
    assert data_root(card).resolve() == source.resolve()
    assert "chexpert: ready" in out and re.search(r"train \d+, val \d+, test \d+", out)
    # a later call (another process, pytest) finds it without --root
    assert main(["prepare", "chexpert"]) == 0


def test_prepare_names_the_missing_folder_and_fails(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "nih"
    total = len(write_nih(source))  # images 0-59 in images_001, the rest in images_002
    shutil.rmtree(source / "images_002")
    report = check_layout_of("chestxray14", source)
    assert sum(report.missing_images.values()) == total - 60
    assert main(["prepare", "chestxray14", "--root", str(source)]) == 1
    err = capsys.readouterr().err
    assert f"missing: {source / 'images_002' / 'images'} (folder absent)" in err
    assert f"missing: {source / 'images_001' / 'images'}" not in err
    assert f"{total - 60} of the {total} listed images are in none of the image folders" in err
    assert "nihcc.app.box.com" in err or "https://" in err  # where to get it


def test_prepare_of_an_absent_index_says_where_to_get_it(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["prepare", "chexpert", "--root", str(empty)]) == 1
    err = capsys.readouterr().err
    assert f"missing: {empty / 'CheXpert-v1.0-small' / 'train.csv'}" in err
    assert "stanfordmlgroup.github.io" in err and "Credentials" in err
    link = data_root(get_dataset_card("chexpert"))
    assert not link.is_symlink() and not link.exists()  # no link to an incomplete copy is kept


def test_twin_cards_read_the_same_download(home: Path, tmp_path: Path) -> None:
    source = tmp_path / "chexpert"
    write_chexpert(source)
    assert main(["prepare", "chexpert", "--root", str(source)]) == 0
    for twin in ("chexpert_uzeros", "chexpert_multiview", "chexpert_ssl_medical"):
        card = get_dataset_card(twin)
        assert data_root(card).resolve() == source.resolve()
        assert check_layout(card).complete


def check_layout_of(name: str, root: Path) -> LayoutReport:
    from harness.data.acquire import link_root

    card = get_dataset_card(name)
    link_root(card, root)
    return check_layout(card)


@pytest.mark.slow
def test_k_chexpert_runs_the_chexpert_cases_and_nothing_else(home: Path, tmp_path: Path) -> None:
    source = tmp_path / "chexpert"
    write_chexpert(source)
    # one prepare serves every card of the CheXpert download (data_folder: chexpert)
    assert main(["prepare", "chexpert", "--root", str(source)]) == 0
    env = dict(os.environ, MEDXFER_HOME=str(home), MEDXFER_RESULTS=str(tmp_path / "results"))
    env.pop("MEDXFER_RUN_ID", None)
    options = [
        # the smoke profile (96 px) keeps it quick; selection does not depend on the profile
        *("--medxfer-profile", "smoke"),
        # obtained entries of cases without expected values go beside this file, not the repo's
        *("--medxfer-expected", str(tmp_path / "expected" / "real-data.yaml")),
    ]
    process = subprocess.run(
        [*PYTEST, "benchmarks", "-k", "chexpert", "-n", "2", "-rA", *options],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    output = process.stdout + process.stderr
    assert process.returncode == 0, output
    outcomes = re.findall(r"^(PASSED|FAILED|ERROR) (\S+)", process.stdout, re.M)
    skipped = re.findall(r"^SKIPPED \[\d+\] (\S+?):\d+: (.*)$", process.stdout, re.M)
    ran = [test for outcome, test in outcomes if outcome == "PASSED"]
    assert outcomes and all("chexpert" in test for _, test in outcomes), outcomes
    # linear and k-NN for 4 embedded models on both CheXpert cards; ProtoNet skips (multilabel)
    assert len(ran) == 16, output
    assert {t.split("::")[0] for t in ran} == {
        "benchmarks/test_linear.py",
        "benchmarks/test_knn.py",
    }
    assert skipped, output
    assert all("few-shot (ProtoNet) needs one class per image" in why for _, why in skipped)
    assert re.search(r"\b16 passed, 8 skipped\b", process.stdout), output
    assert "16 cases have none yet" in process.stdout  # optional expected values, said once
    assert len(list((tmp_path / "expected").glob("*.obtained/*.yaml"))) == 16
