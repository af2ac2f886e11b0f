"""Few-shot episodes given from a file: the peers' own episodes scored by the presets."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from test_fewshot_presets import _case, _peer_episodes, _peer_protonet_percent, _splits

from harness.protocols.case import CaseRun
from harness.protocols.fewshot import FewShotConfig, run
from harness.protocols.fewshot_pool import build_pool
from harness.protocols.fewshot_presets import ssl_transfer_fewshot

SIZES = {"train": 30, "val": 10, "test": 20}


def _pool_and_config(tmp_path: Path, episodes: np.ndarray, suffix: str = ".npy"):
    case = _case("cifar10", 5, n_way=2)
    config = ssl_transfer_fewshot(case)
    pool, _ = build_pool(_splits(1, 5, SIZES, dict.fromkeys(SIZES, 1.8)), config.pool, None, 0)
    path = tmp_path / f"episodes{suffix}"
    if suffix == ".npy":
        np.save(path, episodes)
    else:
        np.savez(path, episodes=episodes)
    return case, pool, dataclasses.replace(config, n_way=2, episodes_file=str(path))


@pytest.mark.parametrize("suffix", [".npy", ".npz"])
def test_given_episodes_score_as_the_peer_protonet_episode_by_episode(
    tmp_path: Path, suffix: str
) -> None:
    case, pool, config = _pool_and_config(tmp_path, np.zeros((1, 2, 20), dtype=np.int64), suffix)
    # ssl-transfer's own sampler (torch randperm), 37 episodes: not the preset's draw
    given = _peer_episodes(pool.labels, config.n_way, config.n_shot, config.n_query, 37)
    if suffix == ".npy":
        np.save(config.episodes_file, given)
    else:
        np.savez(config.episodes_file, episodes=given)
    result = run(pool, case.task, config, 2)

    reference = _peer_protonet_percent(pool.features, given, config.n_shot) / 100
    assert reference.std() > 0.02  # episodes differ, so a misplaced one would show
    np.testing.assert_allclose(result.details["episode_accuracies"], reference, atol=1e-12)
    assert result.details["episodes"] == 37
    assert result.metrics["accuracy"] == pytest.approx(reference.mean(), abs=1e-12)
    ci = 1.96 * reference.std() / np.sqrt(37)
    assert result.metrics["accuracy_ci95"] == pytest.approx(ci, abs=1e-12)
    assert result.details["episodes_file"] == config.episodes_file
    assert len(result.details["episodes_file_sha256"]) == 64
    assert "seed" not in result.details  # the seeded draw did not run


def _class_relative(rows: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The peers' naming of pool rows: each way's class, and each image's index in that
    class's images in pool order (``sub_meta[class]``)."""
    classes = labels[rows[:, :, 0]]
    within = np.empty_like(rows)
    for (e, w, i), row in np.ndenumerate(rows):
        within[e, w, i] = np.searchsorted(np.flatnonzero(labels == classes[e, w]), row)
    return classes, within


def test_episodes_named_by_class_and_index_score_as_the_same_pool_rows(tmp_path: Path) -> None:
    case, pool, config = _pool_and_config(tmp_path, np.zeros((1, 2, 20), dtype=np.int64))
    given = _peer_episodes(pool.labels, config.n_way, config.n_shot, config.n_query, 23)
    np.save(config.episodes_file, given)
    by_rows = run(pool, case.task, config, 2)
    classes, within = _class_relative(given, pool.labels)
    assert within.max() < given.max() and not np.array_equal(within, given)  # class-relative
    relative = tmp_path / "relative.npz"
    np.savez(relative, classes=classes, images=within)
    by_class = run(pool, case.task, dataclasses.replace(config, episodes_file=str(relative)), 2)
    reference = _peer_protonet_percent(pool.features, given, config.n_shot) / 100
    np.testing.assert_allclose(by_class.details["episode_accuracies"], reference, atol=1e-12)
    assert by_class.details["episode_accuracies"] == by_rows.details["episode_accuracies"]
    assert by_class.details["episodes_file_sha256"] != by_rows.details["episodes_file_sha256"]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda c, i: (c, i[:, :1]), r"classes \(1, 2\) and images \(1, 1, 20\) do not pair"),
        (lambda c, i: (c, i[:, :, :0]), r"images \(1, 2, 0\) do not pair"),
        (lambda c, i: (c + 10, i), "episode 0, way 0 names class 10, not in the pool"),
        (lambda c, i: (c, i + 100), r"episode 0, way 0 names image 119 of class 0, which has"),
        (lambda c, i: (c, i - 1), "episode 0, way 0 names image"),
        (lambda c, i: (c.astype(np.float32), i), "classes must be integer indices"),
    ],
    ids=["shape", "empty", "class", "past", "negative", "float"],
)
def test_bad_class_relative_episodes_name_the_file_and_the_way(
    tmp_path: Path, mutate, message
) -> None:
    case, pool, config = _pool_and_config(tmp_path, np.zeros((1, 2, 20), dtype=np.int64))
    classes, images = mutate(*_class_relative(_good(pool.labels), pool.labels))
    path = tmp_path / "relative.npz"
    np.savez(path, classes=classes, images=images)
    with pytest.raises(ValueError, match=message) as caught:
        run(pool, case.task, dataclasses.replace(config, episodes_file=str(path)), 2)
    assert "relative.npz" in str(caught.value)


def test_the_config_names_the_file_by_its_bytes(tmp_path: Path) -> None:
    default = FewShotConfig()
    assert "episodes_file" not in default.to_dict()  # old records keep their case keys
    first = np.zeros((1, 2, 3), dtype=np.int64)
    path = tmp_path / "e.npy"
    np.save(path, first)
    config = dataclasses.replace(default, episodes_file=str(path))
    before = config.to_dict()["episodes_file_sha256"]
    np.save(path, first + 1)  # same name, other episodes: another case key
    assert config.to_dict()["episodes_file_sha256"] != before
    path.unlink()
    with pytest.raises(FileNotFoundError, match=r"e\.npy"):
        config.to_dict()


def test_the_session_option_reaches_only_configs_that_take_episodes() -> None:
    run_ = CaseRun.__new__(CaseRun)
    run_.seed, run_.episodes_file = 3, "/data/episodes.npy"
    assert run_.configure(FewShotConfig()).episodes_file == "/data/episodes.npy"
    assert run_.configure(FewShotConfig()).seed == 3

    @dataclasses.dataclass(frozen=True)
    class Other:
        seed: int = 0

    assert run_.configure(Other()) == Other(seed=3)


def _good(pool_labels: np.ndarray) -> np.ndarray:
    zeros, ones = np.flatnonzero(pool_labels == 0), np.flatnonzero(pool_labels == 1)
    return np.stack([np.stack([zeros[:20], ones[:20]])])  # 1 episode, 2 ways, 5 + 15


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda e, n: e[:, :1], r"shape \(1, 1, 20\), expected \(episodes, n_way=2"),
        (lambda e, n: np.where(e == e[0, 1, 3], n, e), "episode 0 names a row outside"),
        (lambda e, n: e[:, [0, 0]], "episode 0 has a class in two ways"),
        (lambda e, n: np.concatenate([e[:, :, :1], e[:, :, :1], e[:, :, 2:]], 2), "twice"),
        (lambda e, n: e.astype(np.float64), "must be integer indices"),
    ],
    ids=["shape", "outside", "class-twice", "image-twice", "float"],
)
def test_bad_episodes_name_the_file_and_the_episode(tmp_path: Path, mutate, message) -> None:
    case, pool, config = _pool_and_config(tmp_path, np.zeros((1, 2, 20), dtype=np.int64))
    np.save(config.episodes_file, mutate(_good(pool.labels), len(pool.labels)))
    with pytest.raises(ValueError, match=message) as caught:
        run(pool, case.task, config, 2)
    assert "episodes.npy" in str(caught.value)


def test_a_way_mixing_classes_is_refused(tmp_path: Path) -> None:
    case, pool, config = _pool_and_config(tmp_path, np.zeros((1, 2, 20), dtype=np.int64))
    mixed = _good(pool.labels)
    mixed[0, 0, 7] = np.flatnonzero(pool.labels == 3)[0]
    np.save(config.episodes_file, mixed)
    with pytest.raises(ValueError, match=r"episode 0, way 0 mixes classes \[0, 3\]"):
        run(pool, case.task, config, 2)


def test_unreadable_files_name_themselves(tmp_path: Path) -> None:
    case, pool, config = _pool_and_config(tmp_path, np.zeros((1, 2, 20), dtype=np.int64), ".npz")
    np.savez(config.episodes_file, other=_good(pool.labels))
    with pytest.raises(ValueError, match=r"episodes\.npz: .*neither 'episodes' nor 'classes'"):
        run(pool, case.task, config, 2)
    Path(config.episodes_file).write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(ValueError, match=r"episodes\.npz: unreadable"):
        run(pool, case.task, config, 2)
    np.save(tmp_path / "objects.npy", np.array([None, 1], dtype=object), allow_pickle=True)
    objects = dataclasses.replace(config, episodes_file=str(tmp_path / "objects.npy"))
    with pytest.raises(ValueError, match=r"objects\.npy"):
        run(pool, case.task, objects, 2)
    missing = dataclasses.replace(config, episodes_file=str(tmp_path / "none.npy"))
    with pytest.raises(FileNotFoundError, match=r"none\.npy"):
        run(pool, case.task, missing, 2)
