"""The cache service: keys, one computation per key across threads and processes, files
that are never trusted by name, stale temporaries, events and counts, the statistics
cache and the training store."""

from __future__ import annotations

import json
import multiprocessing
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from harness.cache import keys
from harness.cache.arrays import ARRAYS, array_entry, cached_arrays
from harness.cache.atomic import TMP_INFIX
from harness.cache.codecs import JsonDocument
from harness.cache.runs import RunStore
from harness.cache.store import CacheStore, Entry, Namespace, read_events
from harness.config import cards

DOCS: Namespace[Any] = Namespace("docs", JsonDocument(), suffix=".json")


@pytest.fixture(autouse=True)
def _home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MEDXFER_HOME", str(tmp_path))
    return tmp_path


def _kinds(store: CacheStore, namespace: str = "docs") -> list[str]:
    return [event["event"] for event in read_events(store.folder(namespace))]


# --------------------------------------------------------------------------- keys


def test_stable_hash_is_the_cards_hash_and_digests_arrays() -> None:
    payload = {"b": [1, 2.5, "x"], "a": {"z": None, "y": True}}
    assert keys.stable_hash(payload) == cards.stable_hash(payload)
    assert keys.stable_hash(payload, 32) == cards.stable_hash(payload, 32)
    assert keys.stable_hash({"a": 1, "b": 2}) == keys.stable_hash({"b": 2, "a": 1})
    # arrays enter by content, never by their abbreviated printed form
    big = np.zeros(5000)
    changed = big.copy()
    changed[2500] = 1.0
    assert str(big) == str(changed)
    assert keys.stable_hash({"x": big}) != keys.stable_hash({"x": changed})
    assert keys.stable_hash({"x": big}) != keys.stable_hash({"x": big.astype(np.float32)})
    assert keys.stable_hash({"x": big}) == keys.stable_hash({"x": big.copy()})
    assert keys.array_digest(big) in keys.key_text({"x": big})
    assert keys.safe_name("a/b c:d") == "a__b_c_d"


# --------------------------------------------------------------------------- one computation


def test_computes_once_then_hits_with_events_and_counts(_home: Path) -> None:
    store = CacheStore()
    calls: list[int] = []

    def compute() -> dict[str, Any]:
        calls.append(1)
        return {"value": 3}

    entry = store.entry(DOCS, {"k": 1})
    first = store.get_or_compute(DOCS, entry, compute, describe={"who": "test"})
    second = store.get_or_compute(DOCS, entry, compute)
    assert (first.hit, second.hit) == (False, True) and len(calls) == 1
    assert first.value == second.value == {"value": 3}
    assert entry.path == _home / "docs" / f"{entry.key}.json" and len(entry.key) == 32
    assert json.loads(entry.path.read_text())["key"] == entry.text
    assert store.counts(DOCS) == {"miss": 1, "store": 1, "hit": 1}
    events = read_events(store.folder(DOCS))
    assert [e["event"] for e in events] == ["store", "hit"]
    assert events[0]["key"] == entry.key and events[0]["who"] == "test"
    other = store.get_or_compute(DOCS, store.entry(DOCS, {"k": 2}), compute)
    assert not other.hit and len(calls) == 2


def test_an_exception_in_compute_leaves_no_file() -> None:
    store = CacheStore()
    entry = store.entry(DOCS, {"k": 1})

    def boom() -> Any:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        store.get_or_compute(DOCS, entry, boom)
    assert not entry.path.exists()
    assert not list(entry.path.parent.glob(f"*{TMP_INFIX}*"))
    assert store.counts(DOCS).get("store", 0) == 0
    # a value the codec cannot write fails the same way
    with pytest.raises(ValueError, match="dtype object"):
        cached_arrays("unit", {"k": 1}, lambda: {"x": np.array([None])})
    path = array_entry("unit", {"k": 1}).path
    assert not path.exists() and not list(path.parent.glob(f"*{TMP_INFIX}*"))


class _SignallingStore(CacheStore):
    """Announces when a caller is about to wait for a key's lock."""

    def __init__(self) -> None:
        super().__init__()
        self.waiting = threading.Event()

    def lock(self, entry: Entry) -> Any:
        self.waiting.set()
        return super().lock(entry)


def test_two_threads_racing_for_a_key_compute_once() -> None:
    # A computes and holds the lock until B has passed its unlocked look-up and is
    # about to take the lock: B must then find A's file under the lock, whatever the
    # scheduling. No sleeps: every step waits on an event.
    first = CacheStore()
    second = _SignallingStore()
    entry = first.entry(DOCS, {"k": "race"})
    computing, release = threading.Event(), threading.Event()
    calls: list[str] = []

    def slow() -> dict[str, str]:
        calls.append("a")
        computing.set()
        assert release.wait(30)
        return {"by": "a"}

    def never() -> dict[str, str]:
        calls.append("b")
        return {"by": "b"}

    results: dict[str, Any] = {}
    a = threading.Thread(target=lambda: results.update(a=first.get_or_compute(DOCS, entry, slow)))
    a.start()
    assert computing.wait(30)
    b = threading.Thread(target=lambda: results.update(b=second.get_or_compute(DOCS, entry, never)))
    b.start()
    assert second.waiting.wait(30)  # B found no file and goes for the lock A holds
    release.set()
    a.join(30)
    b.join(30)
    assert calls == ["a"]
    assert not results["a"].hit and results["b"].hit
    assert results["b"].value == {"by": "a"}
    assert second.counts(DOCS) == {"hit": 1}


class _AnnouncingStore(CacheStore):
    """Sets an event when a caller is about to wait for a key's lock (any process)."""

    def __init__(self, about_to_lock: Any) -> None:
        super().__init__()
        self.about_to_lock = about_to_lock

    def lock(self, entry: Entry) -> Any:
        self.about_to_lock.set()
        return super().lock(entry)


def _process_worker(
    home: str, payload: dict[str, Any], log: str, about_to_lock: Any, queue: Any
) -> None:
    import os

    os.environ["MEDXFER_HOME"] = home

    def compute() -> dict[str, int]:
        with open(log, "a", encoding="utf-8") as handle:
            handle.write(f"{os.getpid()}\n")
        return {"pid": os.getpid()}

    store = _AnnouncingStore(about_to_lock)
    lookup = store.get_or_compute(DOCS, store.entry(DOCS, payload), compute)
    queue.put((lookup.hit, lookup.value["pid"]))


def test_two_processes_racing_for_a_key_compute_once(_home: Path) -> None:
    # The test holds the key's lock until both processes have found no file and are
    # about to take the lock; the lock, not timing, makes exactly one of them compute.
    store = CacheStore()
    payload = {"k": "processes"}
    entry = store.entry(DOCS, payload)
    log = _home / "computations.log"
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    ready = [context.Event() for _ in range(2)]
    workers = [
        context.Process(target=_process_worker, args=(str(_home), payload, str(log), event, queue))
        for event in ready
    ]
    with store.lock(entry):
        for worker in workers:
            worker.start()
        for event in ready:
            assert event.wait(120)
        assert not entry.path.exists()
    for worker in workers:
        worker.join(timeout=120)
        assert worker.exitcode == 0
    outcomes = sorted(queue.get(timeout=5) for _ in workers)
    assert [hit for hit, _ in outcomes] == [False, True]
    assert outcomes[0][1] == outcomes[1][1]  # both got the one computed value
    assert len(log.read_text().split()) == 1
    assert _kinds(store).count("store") == 1


# --------------------------------------------------------------------------- never trusted


@pytest.mark.parametrize("damage", ["garbage", "truncated", "other_key", "no_key"])
def test_a_damaged_or_foreign_file_is_recomputed_never_trusted(
    damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = CacheStore()
    entry = store.entry(DOCS, {"k": 1})
    store.get_or_compute(DOCS, entry, lambda: {"value": "right"})
    text = entry.path.read_text()
    if damage == "garbage":
        entry.path.write_bytes(b"\x00not json")
    elif damage == "truncated":
        entry.path.write_text(text[: len(text) // 2])
    elif damage == "other_key":
        other = store.entry(DOCS, {"k": 2})
        entry.path.write_text(json.dumps({"key": other.text, "value": {"value": "wrong"}}))
    else:
        entry.path.write_text(json.dumps({"value": {"value": "wrong"}}))
    again = store.get_or_compute(DOCS, entry, lambda: {"value": "right"})
    assert not again.hit and again.value == {"value": "right"}
    expected = "corrupt" if damage in ("garbage", "truncated") else "mismatch"
    assert _kinds(store)[-2:] == [expected, "store"]
    assert store.counts(DOCS)[expected] == 1
    message = "unreadable" if expected == "corrupt" else "does not hold its key"
    assert message in caplog.text
    assert store.get_or_compute(DOCS, entry, lambda: {"value": "other"}).hit


def test_validate_rejects_a_loaded_value_and_refresh_recomputes() -> None:
    store = CacheStore()
    entry = store.entry(DOCS, {"k": 1})
    store.get_or_compute(DOCS, entry, lambda: {"n": 1})

    def needs_two(value: dict[str, int]) -> str | None:
        return None if value["n"] == 2 else f"n={value['n']}"

    fixed = store.get_or_compute(DOCS, entry, lambda: {"n": 2}, validate=needs_two)
    assert not fixed.hit and fixed.value == {"n": 2}
    assert store.get_or_compute(DOCS, entry, lambda: {"n": 3}, validate=needs_two).hit
    refreshed = store.get_or_compute(DOCS, entry, lambda: {"n": 4}, refresh=True)
    assert not refreshed.hit and store.load(DOCS, entry) == {"n": 4}


def test_stale_temporaries_of_a_killed_writer_are_removed() -> None:
    store = CacheStore()
    entry = store.entry(DOCS, {"k": 1})
    entry.path.parent.mkdir(parents=True)
    stale = entry.path.with_name(f"{entry.path.name}{TMP_INFIX}abc.json")
    stale.write_text("half a fi")
    unrelated = entry.path.with_name(f"other.json{TMP_INFIX}abc.json")
    unrelated.write_text("another key's writer")
    lookup = store.get_or_compute(DOCS, entry, lambda: {"ok": True})
    assert not lookup.hit and entry.path.is_file()
    assert not stale.exists() and unrelated.exists()
    assert _kinds(store) == ["stale", "store"]


def test_entries_reject_folders_that_are_not_plain_names() -> None:
    store = CacheStore()
    with pytest.raises(ValueError, match="plain folder name"):
        store.entry(DOCS, {"k": 1}, subfolders=("../up",))
    with pytest.raises(ValueError, match="plain folder name"):
        Namespace("a/b", JsonDocument())


# --------------------------------------------------------------------------- statistics cache


def test_array_cache_keeps_dtypes_and_checks_its_key(_home: Path) -> None:
    calls: list[int] = []

    def compute() -> dict[str, np.ndarray]:
        calls.append(1)
        return {"a": np.arange(5.0), "b": np.eye(2, dtype=np.int64), "s": np.array("text")}

    first, hit1 = cached_arrays("unit", {"k": 1}, compute)
    second, hit2 = cached_arrays("unit", {"k": 1}, compute)
    assert (hit1, hit2) == (False, True) and len(calls) == 1
    for name in ("a", "b", "s"):
        np.testing.assert_array_equal(first[name], second[name])
        assert first[name].dtype == second[name].dtype
    path = array_entry("unit", {"k": 1}).path
    assert path.parent == _home / "arrays" / "unit" and path.is_file()
    np.savez(path, a=np.zeros(5), __key__=np.array(json.dumps({"k": 99})))
    arrays, hit = cached_arrays("unit", {"k": 1}, compute)
    assert not hit and len(calls) == 2
    np.testing.assert_array_equal(arrays["a"], np.arange(5.0))
    with pytest.raises(ValueError, match="namespace"):
        cached_arrays("../up", {"k": 1}, compute)
    with pytest.raises(ValueError, match="invalid array name"):
        cached_arrays("unit", {"k": 3}, lambda: {"file": np.ones(1)})
    assert ARRAYS.name == "arrays"


# --------------------------------------------------------------------------- training store


@pytest.fixture
def case_folder(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "checkpoints" / "case"


def test_training_store_reuses_a_finished_result_and_cleans_its_folders(
    case_folder: Path,
) -> None:
    runs = RunStore(case_folder, {"case_id": "c"})
    seen: list[Path] = []

    def train(training: Any) -> dict[str, Any]:
        seen.append(training.folder)
        assert training.finished("sweep", lambda: {"score": 0.5}) == {"score": 0.5}
        assert training.finished("sweep", lambda: {"score": 0.0}) == {"score": 0.5}
        checkpoint = training.checkpoint("main", {"lr": 0.1})
        checkpoint.save({"step": 3})
        assert checkpoint.load()["step"] == 3
        assert training.checkpoint("main", {"lr": 0.2}).load() is None  # another run
        return {"metric": 1.0}

    data = np.arange(10)
    value, reused = runs.result({"data": data}, {"test": 1}, train)
    assert (value, reused) == ({"metric": 1.0}, False)
    assert not seen[0].exists()  # the working folder goes once the result is stored
    value, reused = runs.result({"data": data}, {"test": 1}, train)
    assert reused and len(seen) == 1
    _, reused = runs.result({"data": data}, {"test": 1}, train, reuse=False)
    assert not reused and len(seen) == 2
    _, reused = runs.result({"data": data + 1}, {"test": 1}, train)
    assert not reused and len(seen) == 3
    kinds = _kinds(CacheStore(), "checkpoints")
    assert kinds.count("mismatch") == 3 and "hit" in kinds


def test_opening_a_training_deletes_stale_trainings_and_temporaries(case_folder: Path) -> None:
    runs = RunStore(case_folder, {"case_id": "c"})
    old = runs.open(runs.training_key({"config": 1}))
    (old.folder / "main.pt").write_bytes(b"old")
    new = runs.open(runs.training_key({"config": 2}))
    leftover = new.folder / f"main.pt{TMP_INFIX}x.pt"
    leftover.write_bytes(b"half")
    assert not old.folder.exists() and new.folder.is_dir()
    again = runs.open(new.key)
    assert again.folder == new.folder and not leftover.exists()
