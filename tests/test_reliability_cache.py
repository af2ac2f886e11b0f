"""Cache integrity and housekeeping (issue 16): files trusted by content, the user's git
repository left untouched, damaged archives named and rebuilt, lock holders recorded and
timed out, stale temporaries cleaned, a read-only home, full disks and broken records."""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import os
import re
import signal
import struct
import subprocess
import sys
import threading
import time
import warnings
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from tiny_cases import toy_dataset_card

from harness import features
from harness.baselines.calibrate import records_by_case
from harness.cache import atomic, locks
from harness.cache.arrays import ARRAYS, array_entry, cached_arrays
from harness.cache.codecs import JsonDocument
from harness.cache.store import CacheStore, Namespace, read_events
from harness.config import paths
from harness.config.cards import DatasetCard, get_model_card
from harness.data import DatasetError, DatasetNotPrepared
from harness.data.npz import SplitData, read_npz, read_npz_meta, write_npz
from harness.data.prepare import dataset_file, is_prepared, load_splits, prepare
from harness.records.provenance import git_state
from harness.records.results import (
    DatasetInfo,
    ModelInfo,
    ProtocolInfo,
    ResultRecord,
    store,
)

DOCS: Namespace[Any] = Namespace("docs", JsonDocument(), suffix=".json")
HOUR = 3600.0


@pytest.fixture(autouse=True)
def _home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("MEDXFER_HOME", str(home))
    monkeypatch.setenv("MEDXFER_RESULTS", str(tmp_path / "results"))
    monkeypatch.delenv(paths.READONLY_ENV, raising=False)
    monkeypatch.delenv(locks.TIMEOUT_ENV, raising=False)
    return home


def _kinds(folder: Path) -> list[str]:
    return [event["event"] for event in read_events(folder)]


# --------------------------------------------------------------------------- 1. content


class _Scaled(torch.nn.Module):
    """A backbone stand-in: channel means of 2x2 cells, times a factor (a 'model')."""

    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor
        self.pool = torch.nn.AdaptiveAvgPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.pool(x), 1) * self.factor


def _features(weights_id: str, factor: float, images: np.ndarray):
    card = get_model_card("mobilenet_v2.random")
    return features.cached_features(
        card,
        weights_id,
        toy_dataset_card(),
        "train",
        images,
        card.preprocessing.with_input_size(16),
        lambda: _Scaled(factor),
        device="cpu",
        batch_size=4,
    )


def test_another_models_features_in_the_file_are_a_miss_never_a_hit(_home: Path) -> None:
    images = np.random.default_rng(0).integers(0, 255, size=(6, 16, 16), dtype=np.uint8)
    mine, info = _features("weights-a", 1.0, images)
    other, other_info = _features("weights-b", 3.0, images)
    assert not info.hit and not other_info.hit and not np.allclose(mine, other)
    # the probe's swap: the other model's features (same rows) under this key's meta
    with np.load(info.path) as payload:
        meta = str(payload["meta"])
    with open(info.path, "wb") as handle:
        np.savez(handle, features=other, meta=np.array(meta))
    again, again_info = _features("weights-a", 1.0, images)
    assert not again_info.hit
    np.testing.assert_array_equal(again, mine)
    assert _kinds(_home / "features")[-2:] == ["corrupt", "extract"]
    # the whole file of the other model, copied over this one: another key's value
    info.path.write_bytes(other_info.path.read_bytes())
    again, again_info = _features("weights-a", 1.0, images)
    assert not again_info.hit
    np.testing.assert_array_equal(again, mine)
    assert _kinds(_home / "features")[-2:] == ["mismatch", "extract"]
    assert _features("weights-a", 1.0, images)[1].hit
    with np.load(info.path) as payload:
        stored = json.loads(str(payload["meta"]))
    assert stored["key_text"] == json.dumps(json.loads(stored["key_text"]), sort_keys=True)
    assert json.loads(stored["key_text"])["weights_sha256"] == "weights-a"


def test_arrays_whose_content_was_changed_are_recomputed(_home: Path) -> None:
    store_ = CacheStore()
    calls: list[int] = []

    def compute() -> dict[str, np.ndarray]:
        calls.append(1)
        return {"mean": np.arange(4.0)}

    cached_arrays("stats", {"k": 1}, compute, store_)
    entry = array_entry("stats", {"k": 1}, store_)
    with np.load(entry.path) as payload:
        kept = {name: payload[name] for name in payload.files}
    kept["mean"] = kept["mean"] + 1.0  # key and checksum entries left as they were
    with open(entry.path, "wb") as handle:
        np.savez(handle, **kept)
    value, hit = cached_arrays("stats", {"k": 1}, compute, store_)
    assert not hit and len(calls) == 2
    np.testing.assert_array_equal(value["mean"], np.arange(4.0))
    assert store_.counts(ARRAYS)["corrupt"] == 1
    assert cached_arrays("stats", {"k": 1}, compute, store_)[1]


def test_a_json_document_whose_value_was_edited_is_recomputed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store_ = CacheStore()
    entry = store_.entry(DOCS, {"k": 1})
    store_.get_or_compute(DOCS, entry, lambda: {"accuracy": 0.625})
    document = json.loads(entry.path.read_text())
    document["value"]["accuracy"] = 0.594
    entry.path.write_text(json.dumps(document))
    again = store_.get_or_compute(DOCS, entry, lambda: {"accuracy": 0.625})
    assert not again.hit and again.value == {"accuracy": 0.625}
    assert store_.counts(DOCS)["corrupt"] == 1
    assert f"cache file {entry.path} is damaged" in caplog.text


# --------------------------------------------------------------------------- 2. git


def test_provenance_takes_no_lock_in_the_users_repository(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()

    def git(*args: str) -> None:
        subprocess.run(
            ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
            cwd=repo,
            check=True,
            capture_output=True,
        )

    tracked = repo / "a.txt"
    tracked.write_text("a\n")
    os.utime(tracked, (1_000_000_000, 1_000_000_000))
    git("init", "-q")
    git("add", "a.txt")
    git("commit", "-q", "-m", "init")
    index = repo / ".git" / "index"
    os.utime(tracked, (1_100_000_000, 1_100_000_000))  # stale stat data: status would refresh
    before = (index.stat().st_mtime_ns, index.read_bytes())
    state = git_state(repo)
    assert state["commit"] is not None and state["dirty"] is False
    assert (index.stat().st_mtime_ns, index.read_bytes()) == before
    assert not (repo / ".git" / "index.lock").exists()


# --------------------------------------------------------------------------- 3. and 4. npz


def _splits(n: int = 12) -> dict[str, SplitData]:
    rng = np.random.default_rng(1)
    return {
        split: SplitData(rng.integers(0, 255, size=(n, 16, 16), dtype=np.uint8), np.arange(n) % 2)
        for split in ("train", "val", "test")
    }


def _damage_member(path: Path, member: str) -> None:
    """Overwrite bytes inside the compressed data of ``member`` (headers left intact)."""
    import zipfile

    with zipfile.ZipFile(path) as archive:
        offset = archive.getinfo(member).header_offset
    data = bytearray(path.read_bytes())
    name_len, extra_len = struct.unpack("<HH", data[offset + 26 : offset + 30])
    start = offset + 30 + name_len + extra_len + 20
    data[start : start + 40] = b"\xff" * 40
    path.write_bytes(bytes(data))


def test_a_corrupt_compressed_npz_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "set.npz"
    write_npz(path, _splits())
    _damage_member(path, "train_images.npy")
    with pytest.raises(zlib.error), np.load(path) as archive:
        archive["train_images"]  # what numpy alone says: no file named
    with pytest.raises(DatasetError, match=re.escape(f"{path}: key 'train_images' cannot be")):
        read_npz(path, "binary", 2)


def _built_card(tmp_path: Path) -> DatasetCard:
    return DatasetCard(
        name="tiny_cxr",
        version=3,
        modality="chest X-ray",
        task="binary",
        classes=("normal", "lesion"),
        reader={"format": "npz", "file": "tiny.npz"},
        primary_metric="roc_auc",
        metrics=("roc_auc",),
        builder={"name": "cxr_lesion", "seed": 0, "counts": {"train": 8, "val": 4, "test": 4}},
        source_file=str(tmp_path / "tiny.yaml"),
    )


def test_a_corrupted_built_dataset_is_not_ready_and_is_rebuilt(tmp_path: Path, _home: Path) -> None:
    card = _built_card(tmp_path)
    path = prepare(card)
    good = {split: data.images.copy() for split, data in load_splits(card).items()}
    _damage_member(path, "train_images.npy")
    assert read_npz_meta(path) is not None  # the key is still there: only content tells
    assert not is_prepared(card)
    assert prepare(card) == path and is_prepared(card)
    assert _kinds(_home / "data")[-2:] == ["corrupt", "store"]
    rebuilt = load_splits(card)
    for split, images in good.items():
        np.testing.assert_array_equal(rebuilt[split].images, images)
    assert dataset_file(card) == path


# --------------------------------------------------------------------------- 5. locks

_HOLD = """
import os, sys, time
from pathlib import Path
from harness.cache.locks import hold
lock, ready, mode = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
with hold(lock):
    if mode == "fork":
        child = os.fork()
        if child == 0:
            time.sleep(60)
            os._exit(0)
        ready.write_text(str(child))
        os._exit(0)
    ready.write_text(str(os.getpid()))
    time.sleep(60)
"""


def _holder(lock: Path, mode: str) -> tuple[subprocess.Popen, int]:
    ready = lock.parent / "ready"
    lock.parent.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(lock), str(ready), mode],
        cwd=Path(__file__).resolve().parents[1],
    )
    deadline = time.monotonic() + 60
    while not (ready.exists() and ready.read_text()):
        assert process.poll() is None or mode == "fork", "lock holder died"
        assert time.monotonic() < deadline, "lock holder never took the lock"
        time.sleep(0.05)
    return process, int(ready.read_text())


def test_a_stopped_holder_is_named_and_the_waiter_gives_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    store_ = CacheStore(tmp_path / "cache")
    entry = store_.entry(DOCS, {"k": 1})
    lock = Path(f"{entry.path}.lock")
    process, pid = _holder(lock, "sleep")
    outcome: list[BaseException | None] = []

    def wait() -> None:
        try:
            store_.get_or_compute(DOCS, entry, lambda: {"v": 1})
        except BaseException as exc:  # handed to the test thread
            outcome.append(exc)
        else:
            outcome.append(None)

    try:
        os.kill(pid, signal.SIGSTOP)
        monkeypatch.setenv(locks.TIMEOUT_ENV, "0.5")
        holder = locks.read_holder(lock)
        assert holder is not None and holder["pid"] == pid and holder["host"] == locks.this_host()
        caplog.set_level(logging.WARNING, "medxfer.cache")
        waiter = threading.Thread(target=wait, daemon=True)
        waiter.start()
        waiter.join(timeout=30)
        assert not waiter.is_alive(), "the waiter never gave up"
        assert len(outcome) == 1 and isinstance(outcome[0], locks.LockTimeout)
        message = str(outcome[0])
        assert str(lock) in message and f"pid {pid} (stopped)" in message
        assert locks.this_host() in message and locks.TIMEOUT_ENV in message
        assert f"waiting for cache lock {lock}, held by pid {pid}" in caplog.text
        assert not entry.path.exists()
    finally:
        os.kill(pid, signal.SIGKILL)
        process.wait(timeout=30)
    assert store_.get_or_compute(DOCS, entry, lambda: {"v": 1}).value == {"v": 1}
    with locks.hold(lock, timeout=5):  # the kernel freed it with the process
        assert locks.read_holder(lock)["pid"] == os.getpid()
    assert locks.read_holder(lock) is None  # cleared on release


def test_a_lock_left_held_by_a_dead_holders_child_is_broken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    store_ = CacheStore(tmp_path / "cache")
    entry = store_.entry(DOCS, {"k": 1})
    lock = Path(f"{entry.path}.lock")
    process, child = _holder(lock, "fork")
    got: list[int] = []

    def wait() -> None:
        with store_.lock(entry):
            got.append(locks.read_holder(lock)["pid"])

    try:
        process.wait(timeout=30)  # the recorded holder is dead; its forked child holds on
        assert locks.read_holder(lock)["pid"] == process.pid
        monkeypatch.setenv(locks.TIMEOUT_ENV, "20")
        caplog.set_level(logging.WARNING, "medxfer.cache")
        waiter = threading.Thread(target=wait, daemon=True)
        waiter.start()
        waiter.join(timeout=30)
        assert not waiter.is_alive() and got == [os.getpid()]
        assert f"broke cache lock {lock}" in caplog.text
    finally:
        os.kill(child, signal.SIGKILL)


def test_lock_timeout_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert locks.lock_timeout() == locks.DEFAULT_TIMEOUT_S
    monkeypatch.setenv(locks.TIMEOUT_ENV, "12.5")
    assert locks.lock_timeout() == 12.5
    monkeypatch.setenv(locks.TIMEOUT_ENV, "soon")
    with pytest.raises(ValueError, match=locks.TIMEOUT_ENV):
        locks.lock_timeout()


# --------------------------------------------------------------------------- 6. housekeeping


def _leftovers(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "old": folder / "a.npz.tmp-x1y2.npz",  # older format: no writer named
        "old_dead": folder / f"b.npz{atomic.TMP_INFIX}p999999999.{atomic._host_tag()}.z.npz",
        "old_live": folder / f"c.npz{atomic.TMP_INFIX}p{os.getpid()}.{atomic._host_tag()}.z.npz",
        "fresh": folder / "d.npz.tmp-q9.npz",
    }
    for name, path in files.items():
        path.write_bytes(b"partial")
        if name != "fresh":
            os.utime(path, (time.time() - 2 * HOUR, time.time() - 2 * HOUR))
    return files


def test_stale_temporaries_are_cleaned_when_a_store_opens(tmp_path: Path, _home: Path) -> None:
    data = _leftovers(_home / "data" / "tiny_cxr" / "v3")
    runs = _leftovers(_home / "checkpoints" / "case" / "ft-abc")
    results = _leftovers(tmp_path / "results" / "demo" / "case")
    prepare(_built_card(tmp_path))  # the data namespace opens
    runs_store, namespace = CacheStore(), Namespace("checkpoints", JsonDocument())
    runs_store.get_or_compute(namespace, runs_store.entry(namespace, {"k": 1}), lambda: {})
    store(_record(), tmp_path / "results")
    for files in (data, runs, results):
        assert not files["old"].exists() and not files["old_dead"].exists()
        assert files["old_live"].exists() and files["fresh"].exists()
    assert "stale" in _kinds(_home / "data")


def _record() -> ResultRecord:
    return ResultRecord(
        case_id="linear/demo_modality/m",
        suite="demo",
        profile="demo",
        model=ModelInfo(
            name="m",
            category="supervised",
            architecture="resnet18",
            weights_source="random",
            weights_sha256="0" * 64,
            pretraining_data="none",
        ),
        dataset=DatasetInfo(
            name="demo_modality",
            version=1,
            task="binary",
            primary_metric="accuracy",
            semi_synthetic=False,
            classes=["a", "b"],
            n={"train": 4, "val": 2, "test": 2},
        ),
        protocol=ProtocolInfo(name="linear", version=1, config={}),
        metrics={"accuracy": 0.625},
        primary_metric="accuracy",
        primary_value=0.625,
        hyperparameters={},
        seeds={"protocol": 0},
        feature_cache={},
        timings={},
        hardware={},
        versions={},
        git={"commit": None, "dirty": None},
        timestamp="2026-01-02T03:04:05.000006Z",
        run_id="20260102T030405Z-abc123",
    )


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
    }


@pytest.mark.parametrize("how", ["env", "probe"])
def test_a_read_only_home_serves_a_fully_cached_run(
    how: str, tmp_path: Path, _home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    card = _built_card(tmp_path)
    prepare(card)
    cached_arrays("stats", {"k": 1}, lambda: {"mean": np.arange(3.0)})
    before = _snapshot(_home)
    if how == "env":
        monkeypatch.setenv(paths.READONLY_ENV, "1")
    else:  # what the probe finds on a read-only mount (root ignores chmod, so simulate it)
        monkeypatch.setattr(paths, "_probe_writable", lambda folder: False)
        paths._PROBED.clear()
    try:
        assert not paths.home_writable()
        assert prepare(card) == dataset_file(card) and is_prepared(card)
        assert len(load_splits(card)["train"]) == 8
        value, hit = cached_arrays("stats", {"k": 1}, lambda: {"mean": np.zeros(3)})
        assert hit and value["mean"].tolist() == [0.0, 1.0, 2.0]
        # a key that is not cached is computed, not stored
        value, hit = cached_arrays("stats", {"k": 2}, lambda: {"mean": np.ones(2)})
        assert not hit and value["mean"].tolist() == [1.0, 1.0]
        bigger = dataclasses.replace(
            card,
            builder={"name": "cxr_lesion", "seed": 0, "counts": {"train": 10, "val": 4, "test": 4}},
        )
        with pytest.raises(DatasetNotPrepared, match="read-only"):
            prepare(bigger)  # refused before building what could not be stored
        assert _snapshot(_home) == before  # nothing written into the home
        moved = tmp_path / "results" / "cache-events"
        assert _kinds(moved / "arrays") == ["hit", "unstored"]
        assert _kinds(moved / "data") == ["hit", "hit", "mismatch"]
    finally:
        paths._PROBED.clear()


def test_a_full_disk_names_the_file_being_written(tmp_path: Path) -> None:
    target = tmp_path / "out" / "record.json"

    def full(handle: Any) -> None:
        handle.write(b"{")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError) as raised:
        atomic.write_with(target, full)
    assert raised.value.errno == errno.ENOSPC
    assert str(target) in str(raised.value)
    assert list(target.parent.iterdir()) == []  # no temporary left behind


def test_calibrate_ignores_temporaries_and_skips_a_corrupt_record(tmp_path: Path) -> None:
    results = tmp_path / "run"
    good = store(_record(), results)
    (good.parent / f"x.json{atomic.TMP_INFIX}abc.json").write_bytes(b"")  # 0-byte temporary
    broken = good.parent / "20260101T000000000000Z-r.json"
    broken.write_text('{"case_id": ')
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        records = records_by_case(results)
    assert list(records) == ["linear/demo_modality/m"]
    assert records["linear/demo_modality/m"]["primary_value"] == 0.625
    said = [str(w.message) for w in caught if "calibrate" in str(w.message)]
    assert len(said) == 1 and str(broken) in said[0]
