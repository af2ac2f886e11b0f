"""Tests of the few-shot (ProtoNet) protocol: episodes, the batched maths, the interval."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from harness.protocols import episodes as episode_module
from harness.protocols import fewshot
from harness.protocols.base import SplitFeatures, TaskInfo
from harness.protocols.episodes import (
    episode_accuracies,
    predict_episodes,
    sample_episodes,
    summarize,
)
from harness.protocols.fewshot import FewShotConfig, make_pool, run

MULTICLASS = TaskInfo("multiclass", 5, "accuracy", ("accuracy", "roc_auc"))


def _blobs(
    seed: int, per_class: int = 40, n_classes: int = 5, dim: int = 16, spread: float = 1.0
) -> SplitFeatures:
    rng = np.random.default_rng(seed)
    means = spread * rng.normal(size=(n_classes, dim))
    labels = np.repeat(np.arange(n_classes), per_class)
    rng.shuffle(labels)
    features = means[labels] + rng.normal(size=(len(labels), dim))
    return SplitFeatures(features.astype(np.float32), labels.astype(np.int64))


def _reference_accuracies(features: np.ndarray, episodes: np.ndarray, n_shot: int) -> np.ndarray:
    """ProtoNet one episode, one query, one prototype at a time: slow and obviously right."""
    accuracies = []
    for episode in episodes:
        prototypes = [features[row[:n_shot]].astype(np.float64).mean(axis=0) for row in episode]
        correct, total = 0, 0
        for way, row in enumerate(episode):
            for q in row[n_shot:]:
                query = features[q].astype(np.float64)
                distances = [np.sum((query - p) ** 2) for p in prototypes]
                correct += int(np.argmin(distances) == way)
                total += 1
        accuracies.append(correct / total)
    return np.array(accuracies)


# ---------------------------------------------------------------------- episode sampling


def test_episodes_have_the_right_shape_classes_and_no_repeats_within_an_episode() -> None:
    labels = np.repeat(np.arange(6), [12, 15, 20, 12, 30, 13])
    episodes = sample_episodes(labels, n_way=4, n_shot=3, n_query=7, episodes=200, seed=0)
    assert episodes.shape == (200, 4, 10)
    assert episodes.dtype == np.int64
    for episode in episodes:
        classes = labels[episode]
        # every row is one class; the rows are distinct classes
        assert np.all(classes == classes[:, :1])
        assert len(set(classes[:, 0])) == 4
        # no image twice in an episode
        assert len(set(episode.ravel())) == episode.size
    # with replacement across episodes: images recur
    counts = np.bincount(episodes.ravel(), minlength=len(labels))
    assert counts.max() > 1


def test_same_seed_gives_the_same_episodes_and_another_seed_does_not() -> None:
    labels = np.repeat(np.arange(5), 40)
    first = sample_episodes(labels, 5, 5, 15, 100, seed=3)
    again = sample_episodes(labels, 5, 5, 15, 100, seed=3)
    other = sample_episodes(labels, 5, 5, 15, 100, seed=4)
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


def test_classes_and_images_are_drawn_uniformly() -> None:
    # 2 of 4 classes per episode: every class is in an episode with probability 1/2, and
    # every image of a 10-image class is drawn with probability 1/2 * 5/10.
    labels = np.repeat(np.arange(4), 10)
    episodes = sample_episodes(labels, 2, 2, 3, 4000, seed=0)
    class_rate = np.bincount(labels[episodes[:, :, 0]].ravel(), minlength=4) / 4000
    assert np.allclose(class_rate, 0.5, atol=0.03)
    image_rate = np.bincount(episodes.ravel(), minlength=40) / 4000
    assert np.allclose(image_rate, 0.25, atol=0.035)


def test_way_order_is_random_within_episodes() -> None:
    labels = np.repeat(np.arange(3), 10)
    episodes = sample_episodes(labels, 3, 1, 1, 300, seed=0)
    first_way = labels[episodes[:, 0, 0]]
    assert set(first_way.tolist()) == {0, 1, 2}


def test_sampler_refuses_small_classes_and_too_few_classes() -> None:
    labels = np.repeat(np.arange(3), [10, 4, 10])
    with pytest.raises(ValueError, match=r"class 1 has 4 images.*5 \+ 2 = 7"):
        sample_episodes(labels, 2, 5, 2, 10, seed=0)
    with pytest.raises(ValueError, match="4-way episodes need 4 classes, the pool has 3"):
        sample_episodes(labels, 4, 1, 1, 10, seed=0)


# ---------------------------------------------------------------------- the maths


def test_batched_protonet_equals_a_naive_loop_on_random_data() -> None:
    pool = _blobs(seed=0, per_class=40, spread=0.35)
    config = FewShotConfig(n_way=5, n_shot=5, n_query=10, episodes=300, seed=7)
    result = run(pool, MULTICLASS, config)

    episodes = sample_episodes(pool.labels, 5, 5, 10, 300, seed=7)
    batched = episode_accuracies(predict_episodes(pool.features, episodes, 5))
    reference = _reference_accuracies(pool.features, episodes, 5)
    assert np.array_equal(batched, reference)
    # a hard enough problem that episodes differ, so the CI is exercised
    assert 0.3 < reference.mean() < 0.95
    assert reference.std() > 0.05
    expected_ci = 1.96 * np.std(reference) / np.sqrt(300)
    assert result.metrics["accuracy"] == pytest.approx(np.mean(reference), abs=1e-12)
    assert result.metrics["accuracy_ci95"] == pytest.approx(expected_ci, abs=1e-12)
    summary = result.details["episode_accuracy"]
    assert summary["min"] == reference.min()
    assert summary["max"] == reference.max()
    assert summary["std"] == pytest.approx(np.std(reference), abs=1e-12)


def test_chunking_does_not_change_predictions(monkeypatch: pytest.MonkeyPatch) -> None:
    pool = _blobs(seed=1, spread=0.3)
    episodes = sample_episodes(pool.labels, 5, 4, 6, 50, seed=0)
    whole = predict_episodes(pool.features, episodes, 4)
    monkeypatch.setattr(episode_module, "_CHUNK_BYTES", 1)  # one episode per chunk
    assert np.array_equal(predict_episodes(pool.features, episodes, 4), whole)


def test_summary_of_known_episode_accuracies() -> None:
    # Four 2-way episodes with 1 query per class; predictions set by hand.
    predictions = np.array(
        [
            [[0], [1]],  # both right: 1.0
            [[0], [0]],  # 0.5
            [[1], [1]],  # 0.5
            [[1], [0]],  # both wrong: 0.0
        ]
    )
    accuracies = episode_accuracies(predictions)
    assert accuracies.tolist() == [1.0, 0.5, 0.5, 0.0]
    mean, ci = summarize(accuracies)
    assert mean == 0.5
    # population std: sqrt(mean of squared deviations) = sqrt(0.125)
    assert ci == pytest.approx(1.96 * math.sqrt(0.125) / 2, abs=1e-15)


def test_sign_flip_problem_matches_its_per_episode_oracle_and_expectation() -> None:
    # 1-D features, 1 shot. Class 0 sits at 0; half of class 1 at +2, half at -2. The
    # class-1 prototype is its single support image s. A class-0 query (at 0) is always
    # right (0 vs 2); a class-1 query is right iff it has the sign of s (0 vs 2, or 4 vs 2).
    # So an episode's accuracy is (Q + #class-1 queries with the support's sign) / 2Q,
    # known from the labels alone, and its expectation is 1/2 + 1/2 (m-1)/(2m-1).
    m, n_query, n_episodes = 50, 10, 600
    values = np.concatenate([np.zeros(2 * m), np.full(m, 2.0), np.full(m, -2.0)])
    labels = np.repeat([0, 1], 2 * m)
    pool = SplitFeatures(values[:, None].astype(np.float32), labels)
    task = TaskInfo("binary", 2, "roc_auc", ("accuracy", "roc_auc"))
    config = FewShotConfig(n_way=2, n_shot=1, n_query=n_query, episodes=n_episodes, seed=11)
    result = run(pool, task, config)

    episodes = sample_episodes(labels, 2, 1, n_query, n_episodes, seed=11)
    oracle = []
    for episode in episodes:
        way1 = int(np.flatnonzero(labels[episode[:, 0]] == 1)[0])
        support, queries = values[episode[way1, 0]], values[episode[way1, 1:]]
        oracle.append((n_query + np.sum(queries == support)) / (2 * n_query))
    oracle = np.array(oracle)
    batched = episode_accuracies(predict_episodes(pool.features, episodes, 1))
    assert np.array_equal(batched, oracle)
    assert result.metrics["accuracy"] == pytest.approx(oracle.mean(), abs=1e-12)
    assert result.metrics["accuracy_ci95"] == pytest.approx(
        1.96 * oracle.std() / math.sqrt(n_episodes), abs=1e-12
    )
    expected = 0.5 + 0.5 * (m - 1) / (2 * m - 1)
    assert abs(result.metrics["accuracy"] - expected) < 1.5 * result.metrics["accuracy_ci95"]


def test_separated_classes_give_accuracy_one_and_zero_interval() -> None:
    pool = _blobs(seed=2, spread=50.0)
    result = run(pool, MULTICLASS, FewShotConfig(n_shot=5, n_query=15, episodes=200))
    assert result.metrics == {"accuracy": 1.0, "accuracy_ci95": 0.0}


def test_identical_features_tie_to_the_first_way() -> None:
    pool = SplitFeatures(np.ones((60, 4), np.float32), np.repeat(np.arange(3), 20))
    task = TaskInfo("multiclass", 3, "accuracy", ("accuracy",))
    result = run(pool, task, FewShotConfig(n_way=3, n_shot=2, n_query=3, episodes=20))
    # every query goes to way 0: each episode scores exactly 1/3 (the CI is 0 up to the
    # rounding of the mean of 20 copies of 1/3)
    assert result.metrics["accuracy"] == pytest.approx(1 / 3, abs=1e-15)
    assert result.metrics["accuracy_ci95"] == pytest.approx(0.0, abs=1e-15)
    assert result.details["episode_accuracy"]["min"] == result.details["episode_accuracy"]["max"]


# ---------------------------------------------------------------------- run(): settings, record


def test_same_seed_same_result_and_another_seed_other_episodes() -> None:
    pool = _blobs(seed=3, spread=0.4)
    config = FewShotConfig(n_shot=5, n_query=5, episodes=100, seed=0)
    first, again = run(pool, MULTICLASS, config), run(pool, MULTICLASS, config)
    other = run(pool, MULTICLASS, FewShotConfig(n_shot=5, n_query=5, episodes=100, seed=1))
    assert first.metrics == again.metrics
    assert first.details["episodes_sha256"] == again.details["episodes_sha256"]
    assert first.details["episodes_sha256"] != other.details["episodes_sha256"]
    assert first.metrics["accuracy"] != other.metrics["accuracy"]


def test_accuracy_is_the_primary_value_whatever_the_dataset_metric() -> None:
    pool = _blobs(seed=4, n_classes=2, spread=3.0)
    task = TaskInfo("binary", 2, "roc_auc", ("accuracy", "mean_per_class_accuracy", "roc_auc"))
    result = run(pool, task, FewShotConfig(n_shot=5, n_query=5, episodes=50))
    assert set(result.metrics) == {"accuracy", "accuracy_ci95"}
    assert "primary_metric_override" not in result.details
    json.dumps(result.details)  # the record must serialise


def test_details_record_the_settings() -> None:
    pool = _blobs(seed=5)
    config = FewShotConfig(n_shot=4, n_query=6, episodes=30, pool="test", seed=2)
    result = run(pool, MULTICLASS, config, n_way_default=3)
    details = result.details
    assert result.hyperparameters == {"n_way": 3}
    assert (details["n_way"], details["n_way_source"]) == (3, "dataset card")
    assert (details["n_shot"], details["n_query"], details["episodes"]) == (4, 6, 30)
    assert (details["pool"], details["pool_size"], details["seed"]) == ("test", 200, 2)
    assert details["pool_class_counts"] == [40] * 5
    assert details["dropped_classes"] == []


def test_n_way_comes_from_config_then_card_then_min_5_classes() -> None:
    seven = TaskInfo("multiclass", 7, "accuracy", ("accuracy",))
    pool = _blobs(seed=6, per_class=12, n_classes=7)
    small = {"n_shot": 2, "n_query": 2, "episodes": 5}
    by_config = run(pool, seven, FewShotConfig(n_way=2, **small), n_way_default=4)
    by_card = run(pool, seven, FewShotConfig(**small), n_way_default=4)
    by_default = run(pool, seven, FewShotConfig(**small))
    assert by_config.details["n_way"] == 2 and by_config.details["n_way_source"] == "config"
    assert by_card.details["n_way"] == 4 and by_card.details["n_way_source"] == "dataset card"
    assert by_default.details["n_way"] == 5
    three = TaskInfo("multiclass", 3, "accuracy", ("accuracy",))
    pool3 = _blobs(seed=6, per_class=12, n_classes=3)
    assert run(pool3, three, FewShotConfig(**small)).details["n_way"] == 3
    with pytest.raises(ValueError, match=r"n_way=4 \(dataset card\) must lie in \[2, 3\]"):
        run(pool3, three, FewShotConfig(**small), n_way_default=4)


def test_small_class_is_an_error_naming_class_and_counts() -> None:
    labels = np.repeat(np.arange(5), [40, 40, 7, 40, 0])
    pool = SplitFeatures(np.random.default_rng(0).normal(size=(127, 8)), labels)
    config = FewShotConfig(n_way=3, n_shot=5, n_query=5, episodes=10)
    with pytest.raises(ValueError) as caught:
        run(pool, MULTICLASS, config)
    message = str(caught.value)
    assert "class 2 has 7 images" in message
    assert "class 4 has 0 images" in message
    assert "n_shot + n_query = 5 + 5 = 10" in message
    assert "'train+test'" in message
    assert "on_small_class='drop'" in message


def test_drop_mode_leaves_small_classes_out_and_records_them() -> None:
    labels = np.repeat(np.arange(5), [40, 40, 7, 40, 0])
    rng = np.random.default_rng(0)
    features = 30.0 * np.eye(5, 8)[labels] + rng.normal(size=(127, 8))
    pool = SplitFeatures(features, labels)
    config = FewShotConfig(n_way=3, n_shot=5, n_query=5, episodes=50, on_small_class="drop")
    result = run(pool, MULTICLASS, config)
    assert result.details["dropped_classes"] == [2, 4]
    assert result.details["pool_class_counts"] == [40, 40, 7, 40, 0]
    # if class 2 were drawn it would appear in episodes; with 3 of 3 kept classes per
    # episode and separated blobs every episode is perfect
    assert result.metrics == {"accuracy": 1.0, "accuracy_ci95": 0.0}
    # the episodes are those of the kept classes' sub-pool
    kept = np.flatnonzero(np.isin(labels, [0, 1, 3]))
    drawn = kept[sample_episodes(labels[kept], 3, 5, 5, 50, seed=0)]
    assert set(labels[drawn].ravel().tolist()) == {0, 1, 3}

    four_way = FewShotConfig(n_way=4, n_shot=5, n_query=5, episodes=5, on_small_class="drop")
    with pytest.raises(ValueError, match=r"only 3 class\(es\) \[0, 1, 3\].*dropped \[2, 4\]"):
        run(pool, MULTICLASS, four_way)


def test_bad_inputs_are_refused() -> None:
    pool = _blobs(seed=7)
    with pytest.raises(ValueError, match="multilabel"):
        run(pool, TaskInfo("multilabel", 5, "roc_auc", ("roc_auc",)), FewShotConfig())
    nan = SplitFeatures(np.full((200, 16), np.nan), pool.labels)
    with pytest.raises(ValueError, match="NaN or inf"):
        run(nan, MULTICLASS, FewShotConfig())
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 5\)"):
        run(SplitFeatures(pool.features, pool.labels + 1), MULTICLASS, FewShotConfig())


# ---------------------------------------------------------------------- config and pools


def test_config_validation_profiles_and_dict() -> None:
    with pytest.raises(ValueError, match="pool"):
        FewShotConfig(pool="val")
    with pytest.raises(ValueError, match="on_small_class"):
        FewShotConfig(on_small_class="skip")
    with pytest.raises(ValueError, match="n_way"):
        FewShotConfig(n_way=1)
    with pytest.raises(ValueError, match="episodes"):
        FewShotConfig(episodes=0)
    with pytest.raises(ValueError, match="unknown profile"):
        FewShotConfig.for_profile("huge")
    paper = FewShotConfig.for_profile("paper")
    assert (paper.n_shot, paper.n_query, paper.episodes, paper.pool) == (20, 15, 600, "train+test")
    assert FewShotConfig.for_profile("demo") == paper
    smoke = FewShotConfig.for_profile("smoke")
    assert (smoke.n_shot, smoke.n_query, smoke.episodes) == (5, 5, 100)
    assert json.loads(json.dumps(paper.to_dict())) == {
        "n_way": None,
        "n_shot": 20,
        "n_query": 15,
        "episodes": 600,
        "pool": "train+test",
        "seed": 0,
        "on_small_class": "error",
    }


def test_make_pool_concatenates_the_pool_splits_in_order() -> None:
    def split(value: float, n: int, label: int) -> SplitFeatures:
        return SplitFeatures(np.full((n, 2), value), np.full(n, label), np.full(n, label))

    features = {"train": split(0, 3, 0), "val": split(1, 2, 1), "test": split(2, 4, 2)}
    pooled = make_pool(features, "train+test")
    assert pooled.features[:, 0].tolist() == [0] * 3 + [2] * 4
    assert pooled.labels.tolist() == [0] * 3 + [2] * 4
    assert pooled.groups is not None and len(pooled.groups) == 7
    assert len(make_pool(features, "train+val+test")) == 9
    assert len(make_pool(features, "test")) == 4
    with pytest.raises(ValueError, match=r"needs split\(s\) \['val'\]"):
        make_pool({"train": features["train"], "test": features["test"]}, "train+val+test")
    assert fewshot.pool_splits("train+test") == ("train", "test")
