"""Fault injection (issue 16, item 7): kills at random points, concurrent sessions, bad inputs.

Each operation of ``tests/fault_driver.py`` (feature extraction, dataset build, record
writing, fine-tune checkpointing) runs in a child process against a fresh cache home
and results folder, and is killed with SIGKILL:

* **time-based**: after a seeded random delay within the operation's measured duration
  (counted from the child's ``READY``, once its imports are done);
* **syscall-exact**: on entry to its K-th ``rename`` system call, by ``strace -e
  inject=rename,renameat,renameat2:signal=KILL:when=K`` where strace is installed and
  may trace, else by the driver's Python hook (SIGKILL at the K-th ``os.replace``),
  i.e. between a temporary's write and its rename.

After each kill the operation runs again to completion in a fresh process, and then
every cache file loads through its reader (or is a temporary, lock or event log),
every record validates, every finished artefact from before the re-run is still there
byte for byte, no key was a hit after a ``corrupt`` / ``mismatch`` event, and the
result equals an uninterrupted run's bit for bit.

CI runs a fast subset; ``MEDXFER_FAULTS=full pytest tests/test_faults.py`` runs the
full set (20 or more kill points per operation). The terminal summary says how many
kills (and by which mode), bad inputs and concurrent sessions were tried.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from fault_tools import (
    TALLY,
    Workdir,
    check_events,
    check_folders,
    finished_artefacts,
    full_run,
    kill_after,
    lost_artefacts,
    make_workdir,
    python_kill_at,
    run_op,
    seeded_delays,
    strace_kill_at,
    strace_path,
    strace_rename_count,
    timed_op,
)

OPS = ("records", "dataset", "features", "finetune")
#: (time-based, syscall-exact) kill points per operation.
FAST = {"records": (1, 1), "dataset": (1, 1), "features": (1, 0), "finetune": (0, 1)}
FULL = {op: (16, 6) for op in OPS}
SEED = int(os.environ.get("MEDXFER_FAULTS_SEED", "16"))


def _plan(op: str) -> tuple[int, int]:
    return (FULL if full_run() else FAST)[op]


@pytest.fixture(scope="session")
def strace() -> str | None:
    """The strace executable, or None for the Python fallback (``MEDXFER_FAULTS_SYSCALL``
    set to ``python`` forces the fallback)."""
    if os.environ.get("MEDXFER_FAULTS_SYSCALL", "").lower() == "python":
        return None
    return strace_path()


@pytest.fixture(scope="session")
def references(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Uninterrupted runs, made on first use: ``op -> (digest, seconds, renames)``."""
    made: dict[str, Any] = {}

    def get(op: str) -> tuple[dict[str, Any], float, int]:
        if op not in made:
            work = make_workdir(tmp_path_factory.mktemp(f"ref-{op}"))
            outcome, seconds = timed_op(op, work, count_renames=True)
            assert outcome.renames is not None
            made[op] = (outcome.digest, seconds, outcome.renames)
        return made[op]

    return {"get": get}


def _verify_rerun(op: str, work: Workdir, reference: dict[str, Any]) -> list[str]:
    """Re-run ``op`` in a fresh process after a fault; every invariant it breaks."""
    before = finished_artefacts(work)
    problems = check_folders(work)  # what the kill left must already be loadable or a temp
    rerun = run_op(op, work)
    problems += check_folders(work) + check_events(work) + lost_artefacts(before)
    if rerun.digest != reference:
        problems.append(f"the re-run differs from an uninterrupted run: {rerun.digest}")
    return problems


def _tally(problems: list[str]) -> None:
    TALLY["violations"] += len(problems)
    assert problems == [], "\n".join(problems)


@pytest.mark.parametrize("op", [op for op in OPS if _plan(op)[0]])
def test_time_based_kills_leave_nothing_corrupt_lost_or_stale(
    op: str, references: dict[str, Any], tmp_path: Path
) -> None:
    count, _ = _plan(op)
    if count == 0:
        pytest.skip(f"no time-based kill of {op} in this subset (MEDXFER_FAULTS=full)")
    reference, seconds, _ = references["get"](op)
    problems: list[str] = []
    killed = 0
    for index, delay in enumerate(seeded_delays(SEED + OPS.index(op), count, seconds)):
        work = make_workdir(tmp_path / f"kill-{index}")
        outcome = kill_after(op, work, delay)
        killed += outcome.killed
        problems += [f"kill after {delay:.2f} s: {p}" for p in _verify_rerun(op, work, reference)]
    _tally(problems)
    print(f"{op}: {killed} of {count} time-based kills landed before the end")


@pytest.mark.parametrize("op", [op for op in OPS if _plan(op)[1]])
def test_syscall_exact_kills_between_write_and_rename(
    op: str, references: dict[str, Any], strace: str | None, tmp_path: Path
) -> None:
    _, count = _plan(op)
    if count == 0:
        pytest.skip(f"no syscall-exact kill of {op} in this subset (MEDXFER_FAULTS=full)")
    reference, _, hooked_renames = references["get"](op)
    renames = hooked_renames  # os.replace / os.rename calls: one rename syscall each
    if strace is not None and full_run():  # the full set counts the syscalls themselves
        renames = strace_rename_count(op, make_workdir(tmp_path / "count"), strace)
    assert renames > 0, f"{op} renamed nothing: nothing to kill"
    rng = np.random.default_rng(SEED + 10 * OPS.index(op))
    picked = rng.choice(np.arange(1, renames + 1), min(count, renames), replace=False)
    points = sorted(int(p) for p in picked)
    points += [int(p) for p in rng.integers(1, renames + 1, count - len(points))]
    problems: list[str] = []
    for index, k in enumerate(points):
        work = make_workdir(tmp_path / f"kill-{index}")
        if strace is not None:
            outcome = strace_kill_at(op, work, strace, k)
        else:
            outcome = python_kill_at(op, work, k)
        if not outcome.killed:
            problems.append(f"rename {k} of {renames}: the child was not killed")
        problems += [f"kill at rename {k}: {p}" for p in _verify_rerun(op, work, reference)]
    _tally(problems)
    print(f"{op}: {len(points)} kills at renames {points} ({'strace' if strace else 'python'})")


def test_concurrent_sessions_compute_each_key_once(
    references: dict[str, Any], tmp_path: Path
) -> None:
    """Sessions extracting, building and storing into one cache and one results folder."""
    from harness.cache.store import read_events

    plan = {"features": 2, "records": 2, "dataset": 2}
    if full_run():
        plan = {"features": 3, "records": 3, "dataset": 3}
    if full_run():
        plan["finetune"] = 2
    work = make_workdir(tmp_path / "shared")
    children = []
    for op, n in plan.items():
        for _ in range(n):
            command = [sys.executable, "-u", str(Path(__file__).parent / "fault_driver.py")]
            children.append(
                (
                    op,
                    subprocess.Popen(
                        [*command, op, str(work.root)],
                        env=work.env(),
                        stdout=subprocess.PIPE,
                        stderr=subprocess.STDOUT,
                        text=True,
                    ),
                )
            )
    TALLY["concurrent"] += len(children)
    problems: list[str] = []
    for op, child in children:
        output, _ = child.communicate()
        digests = [line[7:] for line in output.splitlines() if line.startswith("DIGEST ")]
        if child.returncode != 0 or not digests:
            problems.append(f"a {op} session failed: {output[-2000:]}")
        elif json.loads(digests[0]) != references["get"](op)[0]:
            problems.append(f"a {op} session's result differs from an uninterrupted run")
    problems += check_folders(work) + check_events(work)
    for namespace, stored in (("features", "extract"), ("data", "store")):
        keys = [e["key"] for e in read_events(work.home / namespace) if e["event"] == stored]
        if len(keys) != len(set(keys)):
            problems.append(f"{namespace}: a key was computed more than once: {keys}")
    records = [p for p in work.results.rglob("*.json") if ".tmp-" not in p.name]
    cases = {p.parent.name for p in records}
    if len(cases) != 24:
        problems.append(f"records of {24 - len(cases)} case(s) lost: {sorted(cases)}")
    _tally(problems)


def test_the_checks_catch_damage_they_look_for(tmp_path: Path) -> None:
    """The invariants are not vacuous: a half record, a damaged feature file, a rewritten
    artefact and a hit after a ``corrupt`` event are each reported."""
    from harness.cache.events import append_event

    work = make_workdir(tmp_path)
    assert check_folders(work) == [] and check_events(work) == []
    record = work.results / "faults" / "case" / "20260101T000000000000Z-x.json"
    record.parent.mkdir(parents=True)
    record.write_text('{"case_id": ')
    features = work.home / "features" / "m" / "d" / ("train-" + "0" * 32 + ".npz")
    features.parent.mkdir(parents=True)
    features.write_bytes(b"PK\x03\x04 cut short")
    problems = check_folders(work)
    assert any("half-written record" in p for p in problems), problems
    assert any("corrupt cache file" in p and features.name in p for p in problems), problems
    for kind in ("corrupt", "hit"):
        line = json.dumps({"event": kind, "namespace": "features", "key": "k"})
        append_event(work.home / "features" / "events.jsonl", line)
    assert len(check_events(work)) == 1
    kept = tmp_path / "kept.npz"
    kept.write_bytes(b"old")
    before = {kept: kept.read_bytes()}
    kept.write_bytes(b"new")
    assert lost_artefacts(before) == [f"finished artefact rewritten: {kept}"]
    kept.unlink()
    assert lost_artefacts(before) == [f"finished artefact lost: {kept}"]


# --------------------------------------------------------------------------- bad inputs


def _csv_images_with_a_corrupt_png(tmp_path: Path) -> tuple[Any, str]:
    from PIL import Image

    from harness.config.dataset_cards import load_dataset_card_file
    from harness.data.prepare import load_splits

    root = tmp_path / "pngs"
    (root / "images").mkdir(parents=True)
    rows = []
    for index in range(12):
        name = f"img{index:02d}.png"
        Image.fromarray(np.full((8, 8), index * 10, dtype=np.uint8)).save(root / "images" / name)
        rows.append({"Image": name, "Label": "pos" if index % 2 else "neg", "Patient": index})
    (root / "images" / "img05.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    with open(root / "index.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    card = {
        "name": "bad_png",
        "version": 1,
        "modality": "test",
        "task": "binary",
        "classes": ["neg", "pos"],
        "primary_metric": "accuracy",
        "reader": {
            "format": "csv_images",
            "root": str(root),
            "index": "index.csv",
            "path_column": "Image",
            "image_root": "images",
            "group_column": "Patient",
            "size": 8,
        },
        "label_policy": {"name": "identity", "column": "Label"},
        "split": {
            "rule": "seeded_fractions",
            "fractions": {"train": 0.5, "val": 0.25, "test": 0.25},
        },
    }
    path = tmp_path / "cards" / "datasets" / "bad_png.yaml"
    path.parent.mkdir(parents=True)
    path.write_text(yaml.safe_dump(card))
    return lambda: load_splits(load_dataset_card_file(path)), "img05.png"


def _truncated_npz(tmp_path: Path) -> tuple[Any, str]:
    from tiny_cases import tiny_dataset

    from harness.config.dataset_cards import load_dataset_card_file
    from harness.data.prepare import load_splits

    card_path = tiny_dataset(tmp_path / "cards", name="cut_ds")
    archive = tmp_path / "cards" / "data" / "cut_ds.npz"
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    return lambda: load_splits(load_dataset_card_file(card_path)), "cut_ds.npz"


def _checkpoint_of_another_run(tmp_path: Path) -> tuple[Any, str]:
    import torch

    from harness.cache.runs import Checkpoint

    path = tmp_path / "ft-case" / "main.pt"
    path.parent.mkdir(parents=True)
    Checkpoint(path, "key-of-another-run").save({"step": 3, "weights": torch.zeros(2)})

    def load() -> None:
        assert Checkpoint(path, "key-of-this-run").load() is None  # never resumed
        raise ValueError(_last_event_reason(tmp_path))

    return load, "main.pt"


def _checkpoint_with_wrong_keys(tmp_path: Path) -> tuple[Any, str]:
    import torch

    from harness.cache.runs import Checkpoint

    path = tmp_path / "ft-case" / "main.pt"
    path.parent.mkdir(parents=True)
    torch.save({"weights": torch.zeros(2)}, path)  # no format, no key

    def load() -> None:
        assert Checkpoint(path, "key-of-this-run").load() is None
        raise ValueError(_last_event_reason(tmp_path))

    return load, "main.pt"


def _last_event_reason(tmp_path: Path) -> str:
    from harness.cache.store import read_events

    events = read_events(tmp_path / "home" / "checkpoints")
    return str(events[-1]["reason"]) if events else "no event"


def _malformed_card(tmp_path: Path) -> tuple[Any, str]:
    from harness.config.dataset_cards import load_dataset_card_file

    path = tmp_path / "cards" / "datasets" / "broken_card.yaml"
    path.parent.mkdir(parents=True)
    path.write_text("name: broken_card\nversion: [1\nclasses: {a\n")
    return lambda: load_dataset_card_file(path), "broken_card.yaml"


def _card_with_a_bad_field(tmp_path: Path) -> tuple[Any, str]:
    from harness.config.dataset_cards import load_dataset_card_file

    path = tmp_path / "cards" / "datasets" / "odd_card.yaml"
    path.parent.mkdir(parents=True)
    card = {
        "name": "odd_card",
        "version": "one",
        "modality": "test",
        "task": "binary",
        "classes": ["a", "b"],
        "reader": {"format": "npz", "file": "odd.npz"},
        "primary_metric": "accuracy",
    }
    path.write_text(yaml.safe_dump(card))
    return lambda: load_dataset_card_file(path), "odd_card.yaml"


BAD_INPUTS = {
    "corrupt PNG in a csv_images layout": _csv_images_with_a_corrupt_png,
    "truncated npz archive": _truncated_npz,
    "checkpoint of another run": _checkpoint_of_another_run,
    "checkpoint without its keys": _checkpoint_with_wrong_keys,
    "card that is not YAML": _malformed_card,
    "card with a mistyped field": _card_with_a_bad_field,
}


@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_a_bad_input_is_an_error_naming_the_culprit(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MEDXFER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MEDXFER_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("MEDXFER_CARDS", str(tmp_path / "cards"))
    TALLY["bad_inputs"] += 1
    action, culprit = BAD_INPUTS[name](tmp_path)
    with pytest.raises(Exception) as info:
        action()
    assert culprit in str(info.value), f"{name}: {info.value!r} does not name {culprit}"
