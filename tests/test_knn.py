"""Tests of the weighted k-NN protocol on features with hand-computable answers."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from harness.protocols.base import SplitFeatures, TaskInfo
from harness.protocols.knn import KnnConfig, knn_scores, run
from harness.protocols.registry import presets_of

MULTICLASS = TaskInfo(
    "multiclass", 3, "accuracy", ("accuracy", "mean_per_class_accuracy", "roc_auc")
)
BINARY = TaskInfo("binary", 2, "roc_auc", ("accuracy", "roc_auc"))


def _blobs(rng: np.random.Generator, n: int, means: np.ndarray) -> SplitFeatures:
    labels = np.arange(n) % len(means)
    features = means[labels] + rng.normal(size=(n, means.shape[1]))
    return SplitFeatures(features.astype(np.float32), labels.astype(np.int64))


def _split(features: list[list[float]], labels: list[int]) -> SplitFeatures:
    return SplitFeatures(np.array(features, dtype=np.float64), np.array(labels))


def test_separable_classes_are_solved_for_every_k() -> None:
    rng = np.random.default_rng(0)
    means = 10.0 * np.eye(3, 16)
    train, val, test = _blobs(rng, 300, means), _blobs(rng, 60, means), _blobs(rng, 90, means)
    result = run(train, val, test, MULTICLASS, KnnConfig())
    perfect = {"accuracy": 1.0, "mean_per_class_accuracy": 1.0, "roc_auc": 1.0}
    assert result.metrics == perfect
    assert result.details["metrics_per_k"] == {"20": perfect, "200": perfect}
    assert result.details["clamped_k"] == []
    assert result.details["n_bank"] == 360
    assert result.hyperparameters == {"k": 20, "temperature": 0.07}
    json.dumps(result.details)


def test_weighted_vote_by_hand() -> None:
    # Query (1, 0); bank (cosine similarity to the query): (2, 0) class 0 -> 1,
    # (1, 1) class 1 -> 1/sqrt 2, (0, 3) class 1 -> 0, (-1, 0) class 0 -> -1.
    # k = 3 takes the first three: a majority vote says class 1 (2 of 3), but the
    # exp(s / T) weights with T = 0.5 give class 0 e^2 against e^sqrt2 + e^0 to class 1.
    train = _split([[2, 0], [1, 1]], [0, 1])
    val = _split([[0, 3], [-1, 0]], [1, 0])
    test = _split([[1, 0], [0, 1]], [0, 1])
    config = KnnConfig(ks=(3, 4), primary_k=3, temperature=0.5)
    scores = knn_scores(
        np.concatenate([train.features, val.features]),
        np.concatenate([train.labels, val.labels]),
        test.features,
        BINARY,
        config,
    )
    w0, w1 = math.exp(1 / 0.5), math.exp(math.sqrt(0.5) / 0.5) + math.exp(0.0)
    assert scores[3][0] == pytest.approx([w0 / (w0 + w1), w1 / (w0 + w1)], abs=1e-12)
    # k = 4 adds (-1, 0), class 0, weight e^-2
    w0_4 = w0 + math.exp(-1 / 0.5)
    assert scores[4][0] == pytest.approx([w0_4 / (w0_4 + w1), w1 / (w0_4 + w1)], abs=1e-12)
    # query (0, 1): (0, 3) -> 1 class 1, (1, 1) -> 1/sqrt 2 class 1, (2, 0) and (-1, 0) -> 0
    # class 0; k = 3 takes one of the two ties at 0, both class 0.
    v1, v0 = math.exp(2) + math.exp(math.sqrt(0.5) / 0.5), math.exp(0.0)
    assert scores[3][1] == pytest.approx([v0 / (v0 + v1), v1 / (v0 + v1)], abs=1e-12)

    result = run(train, val, test, BINARY, config)
    assert result.metrics == {"accuracy": 1.0, "roc_auc": 1.0}
    assert result.details["metrics_per_k"]["4"]["accuracy"] == 1.0


def test_cosine_ignores_feature_scale() -> None:
    rng = np.random.default_rng(1)
    bank, labels = rng.normal(size=(50, 8)), np.arange(50) % 3
    queries = rng.normal(size=(10, 8))
    config = KnnConfig(ks=(5,), primary_k=5)
    scaled = bank * rng.uniform(0.1, 100, size=(50, 1))
    plain = knn_scores(bank, labels, queries, MULTICLASS, config)[5]
    assert np.allclose(knn_scores(scaled, labels, 7 * queries, MULTICLASS, config)[5], plain)
    assert np.allclose(plain.sum(axis=1), 1.0)


def test_k_larger_than_the_bank_is_clamped_and_recorded() -> None:
    rng = np.random.default_rng(2)
    means = 5.0 * np.eye(3, 4)
    train, val, test = _blobs(rng, 9, means), _blobs(rng, 3, means), _blobs(rng, 6, means)
    result = run(train, val, test, MULTICLASS, KnnConfig(ks=(5, 200), primary_k=200))
    assert result.details["effective_k"] == {"5": 5, "200": 12}
    assert result.details["clamped_k"] == [200]
    assert result.hyperparameters["k"] == 12
    bank = np.concatenate([train.features, val.features])
    labels = np.concatenate([train.labels, val.labels])
    twelve = KnnConfig(ks=(12,), primary_k=12)
    by_twelve = knn_scores(bank, labels, test.features, MULTICLASS, twelve)[12]
    by_200 = knn_scores(
        bank, labels, test.features, MULTICLASS, KnnConfig(ks=(200,), primary_k=200)
    )
    assert np.array_equal(by_200[200], by_twelve)


def test_dot_product_mode_stays_finite_for_large_features() -> None:
    # exp(s / 0.07) would overflow for s ~ 1e4; the per-query shift keeps it finite
    bank = np.array([[100.0, 0.0], [0.0, 100.0], [90.0, 10.0]])
    config = KnnConfig(ks=(3,), primary_k=3, normalize=False)
    scores = knn_scores(bank, np.array([0, 1, 0]), np.array([[100.0, 1.0]]), BINARY, config)[3]
    assert np.all(np.isfinite(scores))
    # similarities 10000, 100, 9010: the top neighbour takes (almost) all the weight
    assert scores[0, 0] == pytest.approx(1.0, abs=1e-12)


def test_batch_size_does_not_change_scores() -> None:
    rng = np.random.default_rng(3)
    bank, labels, queries = rng.normal(size=(80, 6)), np.arange(80) % 3, rng.normal(size=(33, 6))
    whole = knn_scores(bank, labels, queries, MULTICLASS, KnnConfig(ks=(7,), primary_k=7))
    small = KnnConfig(ks=(7,), primary_k=7, batch_size=4)
    assert np.allclose(
        knn_scores(bank, labels, queries, MULTICLASS, small)[7], whole[7], atol=1e-14
    )


def test_multilabel_scores_are_weighted_label_means() -> None:
    task = TaskInfo("multilabel", 2, "roc_auc", ("accuracy", "roc_auc"))
    bank = np.array([[1.0, 0.0], [1.0, 1.0]])
    labels = np.array([[1, 0], [1, 1]])
    config = KnnConfig(ks=(2,), primary_k=2, temperature=1.0)
    scores = knn_scores(bank, labels, np.array([[1.0, 0.0]]), task, config)[2]
    w_a, w_b = math.exp(1.0), math.exp(math.sqrt(0.5))
    assert scores[0] == pytest.approx([1.0, w_b / (w_a + w_b)], abs=1e-12)


def test_config_and_input_errors() -> None:
    with pytest.raises(ValueError, match="primary_k"):
        KnnConfig(ks=(10, 50), primary_k=20)
    with pytest.raises(ValueError, match="distinct positive"):
        KnnConfig(ks=(20, 20))
    with pytest.raises(ValueError, match="temperature"):
        KnnConfig(temperature=0.0)
    with pytest.raises(ValueError, match="unknown profile"):
        KnnConfig.for_profile("fast")
    assert KnnConfig.for_profile("smoke").to_dict() == {
        "ks": [20, 200],
        "temperature": 0.07,
        "primary_k": 20,
        "normalize": True,
        "batch_size": 1024,
        "bank": "train+val",
        "softmax_scores": False,
        "round_metrics": None,
    }
    good = _split([[1, 0], [0, 1]], [0, 1])
    with pytest.raises(ValueError, match="test split: features have dimension 3"):
        run(good, good, _split([[1, 0, 0]], [0]), BINARY, KnnConfig())
    with pytest.raises(ValueError, match=r"val split: labels must lie in \[0, 2\)"):
        run(good, _split([[1, 0]], [2]), good, BINARY, KnnConfig())


def test_a_class_missing_from_the_bank_is_an_error_naming_dataset_and_class() -> None:
    # before: every test image was voted class 0, and the case recorded accuracy 0.5
    train = _split([[1, 0], [0.9, 0.1]], [0, 0])
    val = _split([[0.8, 0.2]], [0])
    test = _split([[1, 0], [0, 1]], [0, 1])
    config = KnnConfig(ks=(2,), primary_k=2)
    with pytest.raises(ValueError, match=r"dataset 'demo_x'.*class\(es\) \[1\].*train\+val"):
        run(train, val, test, BINARY, config, dataset="demo_x")
    # class 1 only in val: fine with the train+val bank, an error with a train-only bank
    ok = run(train, _split([[0, 1]], [1]), test, BINARY, config)
    assert ok.metrics["accuracy"] == 1.0
    with pytest.raises(ValueError, match=r"\[1\] have no image in the train memory bank"):
        run(
            train,
            _split([[0, 1]], [1]),
            test,
            BINARY,
            KnnConfig(ks=(2,), primary_k=2, bank="train"),
        )


def _feature_reuse_knn(bank, bank_labels, queries, k, t, classes):
    """ChrisMats/feature-reuse's knn_predict (single-label branch), written out."""
    feature = torch.nn.functional.normalize(torch.as_tensor(queries), dim=1)
    feature_bank = torch.nn.functional.normalize(torch.as_tensor(bank), dim=1).t()
    labels = torch.as_tensor(bank_labels)
    sim_matrix = torch.mm(feature, feature_bank)
    sim_weight, sim_indices = sim_matrix.topk(k=k, dim=-1)
    sim_labels = torch.gather(labels.expand(feature.size(0), -1), dim=-1, index=sim_indices)
    sim_weight = (sim_weight / t).exp()
    one_hot = torch.zeros(feature.size(0) * k, classes, dtype=sim_weight.dtype)
    one_hot = one_hot.scatter(dim=-1, index=sim_labels.view(-1, 1), value=1.0)
    scores = torch.sum(one_hot.view(feature.size(0), -1, classes) * sim_weight.unsqueeze(-1), 1)
    return scores / scores.sum(1).unsqueeze(1)


def test_feature_reuse_knn_preset_matches_the_peer() -> None:
    preset = presets_of("knn")["feature-reuse"]
    case = SimpleNamespace(profile=SimpleNamespace(name="smoke"))
    config = preset.configure(case)
    assert (config.ks, config.temperature, config.bank) == ((200,), 0.1, "train")
    target = SimpleNamespace(case=SimpleNamespace(dataset=SimpleNamespace(name="isic2019")))
    overrides = preset.overrides(target)
    assert overrides["crop_mode"] == "squash" and overrides["mean"][0] == 0.66776717
    rng = np.random.default_rng(4)
    means = 1.5 * np.eye(3, 8)
    train, val, test = _blobs(rng, 240, means), _blobs(rng, 60, means), _blobs(rng, 45, means)
    result = run(train, val, test, MULTICLASS, config)
    scores = _feature_reuse_knn(
        train.features.astype(np.float64), train.labels, test.features.astype(np.float64),
        200, 0.1, 3,
    )  # fmt: skip
    probs = torch.softmax(scores, dim=1).numpy()  # the metric class's Softmax(dim=1)
    from sklearn.metrics import roc_auc_score

    expected_auc = round(roc_auc_score(test.labels, probs, multi_class="ovr"), 3)
    expected_acc = round(float(np.mean(probs.argmax(1) == test.labels)), 3)
    assert result.metrics["roc_auc"] == pytest.approx(expected_auc, abs=1e-9)
    assert result.metrics["accuracy"] == pytest.approx(expected_acc, abs=1e-9)
    assert result.details["n_bank"] == 240 and result.hyperparameters["k"] == 200
    # the softmax moves multiclass AUC relative to the plain probabilities
    plain = roc_auc_score(test.labels, scores.numpy(), multi_class="ovr")
    assert plain != pytest.approx(roc_auc_score(test.labels, probs, multi_class="ovr"), abs=1e-9)
