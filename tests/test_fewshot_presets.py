"""The few-shot peer presets against independent references of the peers' procedures.

The references are written here from linusericsson/ssl-transfer@416913f:few_shot.py (and
its copy jonahanton/SSL_medicalimaging@77fceef:few_shot.py): ProtoNet with
``euclidean_dist`` by broadcasting, ``log_softmax(-dists).max``, accuracies in percent,
``np.mean`` and ``1.96 * np.std / sqrt(iter_num)``; episodes as their loaders draw them
(``randperm`` of the classes, a shuffled per-class loader, one ``randperm`` split).
"""

from __future__ import annotations

import hashlib
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from harness.config.cards import get_model_card
from harness.protocols.base import SplitFeatures, TaskInfo
from harness.protocols.episodes import episode_accuracies, predict_episodes, sample_episodes
from harness.protocols.fewshot import FewShotConfig, run, run_case
from harness.protocols.fewshot_pool import build_pool, capped_indices
from harness.protocols.fewshot_presets import (
    ssl_medicalimaging_fewshot,
    ssl_medicalimaging_preprocessing,
    ssl_transfer_fewshot,
)
from harness.protocols.registry import get_preset


def _case(name: str, num_classes: int, n_way: int | None = None) -> SimpleNamespace:
    fewshot = {} if n_way is None else {"n_way": n_way}
    dataset = SimpleNamespace(name=name, fewshot=fewshot)
    task = TaskInfo("multiclass" if num_classes > 2 else "binary", num_classes, "accuracy", ())
    return SimpleNamespace(
        case=SimpleNamespace(dataset=dataset, profile=SimpleNamespace(name="paper")), task=task
    )


def _splits(seed: int, n_classes: int, sizes: dict[str, int], noise: dict[str, float]):
    """Gaussian class blobs per split; the test split can be noisier than train / val."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_classes, 16))
    out = {}
    for name, per_class in sizes.items():
        labels = np.repeat(np.arange(n_classes), per_class)
        feats = centres[labels] + noise[name] * rng.normal(size=(labels.size, 16))
        order = rng.permutation(labels.size)
        out[name] = SplitFeatures(feats[order].astype(np.float32), labels[order])
    return out


def _peer_protonet_percent(z: np.ndarray, episodes: np.ndarray, n_support: int) -> np.ndarray:
    """Per-episode accuracy in percent, as ProtoNet.loss of ssl-transfer's few_shot.py."""
    z = torch.as_tensor(z, dtype=torch.float64)
    out = []
    for episode in torch.as_tensor(episodes):
        n_class = episode.shape[0]
        xs, xq = z[episode[:, :n_support]], z[episode[:, n_support:]]
        n_query = xq.shape[1]
        z_proto = xs.mean(1)
        zq = xq.reshape(n_class * n_query, -1)
        n, m, d = zq.shape[0], z_proto.shape[0], zq.shape[1]
        dists = torch.pow(zq.unsqueeze(1).expand(n, m, d) - z_proto.unsqueeze(0).expand(n, m, d), 2)
        log_p_y = F.log_softmax(-dists.sum(2), dim=1).view(n_class, n_query, -1)
        _, y_hat = log_p_y.max(2)
        target = torch.arange(n_class).view(n_class, 1).expand(n_class, n_query)
        out.append(torch.eq(y_hat, target).double().mean().item() * 100.0)
    return np.array(out)


def _peer_episodes(labels: np.ndarray, n_way: int, n_support: int, n_query: int, n: int):
    """Episodes drawn as the peers' SetDataset / EpisodicBatchSampler / extract_episode do."""
    torch.manual_seed(0)
    classes = np.unique(labels)
    members = [np.flatnonzero(labels == c) for c in classes]
    per_class = n_support + n_query
    out = np.empty((n, min(n_way, len(classes)), per_class), np.int64)
    for e in range(n):
        drawn = torch.randperm(len(classes))[:n_way]
        batch = np.stack(
            [members[c][torch.randperm(len(members[c]))[:per_class].numpy()] for c in drawn]
        )
        out[e] = batch[:, torch.randperm(per_class).numpy()]
    return out


def _peer_summary(percent: np.ndarray, iter_num: int) -> tuple[float, float]:
    return float(np.mean(percent)), float(1.96 * np.std(percent) / np.sqrt(iter_num))


SIZES = {"train": 60, "val": 20, "test": 40}


@pytest.mark.parametrize(
    ("configure", "case"),
    [
        (ssl_transfer_fewshot, _case("cifar10", 5, n_way=2)),
        (ssl_medicalimaging_fewshot, _case("bach", 5, n_way=2)),
    ],
    ids=["ssl-transfer", "ssl-medicalimaging"],
)
def test_preset_episode_accuracies_mean_and_interval_equal_the_peer_protonet(
    configure, case
) -> None:
    config = configure(case)
    splits = _splits(0, 5, SIZES, {"train": 1.8, "val": 1.8, "test": 1.8})
    pool, _ = build_pool(splits, config.pool, config.pool_cap, config.seed)
    assert len(pool) == 5 * 120  # the whole dataset: train + val + test
    result = run(pool, case.task, config, case.case.dataset.fewshot.get("n_way"))

    episodes = sample_episodes(
        pool.labels, config.n_way, config.n_shot, config.n_query, config.episodes, config.seed
    )
    digest = hashlib.sha256(episodes.astype("<i8").tobytes()).hexdigest()
    assert result.details["episodes_sha256"] == digest
    mine = episode_accuracies(predict_episodes(pool.features, episodes, config.n_shot))
    reference = _peer_protonet_percent(pool.features, episodes, config.n_shot)
    # episodes neither all right nor alike, so a wrong query or episode would show
    assert reference.std() > 2.0 and 50.0 < reference.mean() < 95.0
    np.testing.assert_allclose(mine * 100, reference, rtol=0, atol=1e-6)
    mean, ci = _peer_summary(reference, config.episodes)
    assert result.metrics["accuracy"] == pytest.approx(mean / 100, abs=1e-6)
    assert result.metrics["accuracy_ci95"] == pytest.approx(ci / 100, abs=1e-6)


@pytest.mark.parametrize(
    ("configure", "case", "ways", "shots"),
    [
        (ssl_transfer_fewshot, _case("cifar10", 5, n_way=2), 5, 5),
        (ssl_medicalimaging_fewshot, _case("eyepacs", 5, n_way=5), 5, 20),
        (ssl_medicalimaging_fewshot, _case("bach", 5, n_way=2), 2, 20),
    ],
    ids=["ssl-transfer", "ssl-medicalimaging-5way", "ssl-medicalimaging-2way"],
)
def test_preset_mean_lies_in_the_combined_interval_of_the_peer_sampler(
    configure, case, ways: int, shots: int
) -> None:
    # train / val are easy, test is hard: the pool and the shots both move the mean.
    splits = _splits(1, 5, SIZES, {"train": 1.1, "val": 1.1, "test": 2.6})
    config = configure(case)
    pool, _ = build_pool(splits, config.pool, config.pool_cap, config.seed)
    mine = run(pool, case.task, config).metrics

    whole = SplitFeatures(
        np.concatenate([splits[s].features for s in SIZES]),
        np.concatenate([splits[s].labels for s in SIZES]),
    )
    episodes = _peer_episodes(whole.labels, ways, shots, 15, 600)
    ref_mean, ref_ci = _peer_summary(_peer_protonet_percent(whole.features, episodes, shots), 600)
    combined = math.hypot(mine["accuracy_ci95"], ref_ci / 100)
    assert abs(mine["accuracy"] - ref_mean / 100) <= combined

    # the check has power: drawing from the test split only lands far outside it
    test_only = run(
        splits["test"], case.task, FewShotConfig(**{**config.to_dict(), "pool": "test"})
    )
    assert abs(test_only.metrics["accuracy"] - ref_mean / 100) > 3 * combined


def test_preset_configs_follow_the_peers_command_lines() -> None:
    st = {
        name: ssl_transfer_fewshot(_case(name, c, w))
        for name, c, w in [
            ("cifar10", 10, 5),
            ("bach", 4, 2),
            ("shenzhen", 2, 2),
            ("eyepacs", 5, 5),
        ]
    }
    assert {k: v.n_way for k, v in st.items()} == {
        "cifar10": 5,
        "bach": 4,
        "shenzhen": 2,
        "eyepacs": 5,
    }
    for config in st.values():
        assert (config.n_shot, config.n_query, config.episodes) == (5, 15, 600)
        assert (config.pool, config.pool_cap, config.on_small_class) == (
            "train+val+test",
            None,
            "error",
        )

    cases = {
        "shenzhen": (2, 2, "train+val+test", None),
        "montgomery": (2, 2, "train+val+test", None),
        "bach": (4, 2, "train+val+test", None),
        "cifar10": (10, 5, "train+val+test", None),
        "eyepacs": (5, 5, "train+val+test", 10_001),
        "stoic": (2, 2, "train+val+test", 10_001),
        "chestxray14_7class": (7, 5, "train+val+test", 10_001),
        "chexpert": (2, 2, "train+val", 10_001),
    }
    for name, (classes, way, pool, cap) in cases.items():
        config = ssl_medicalimaging_fewshot(_case(name, classes, way))
        assert (config.n_way, config.pool, config.pool_cap) == (way, pool, cap), name
        assert (config.n_shot, config.n_query, config.episodes) == (20, 15, 600)
    # no card way: the script default 5, cut to the classes as randperm(C)[:5] does
    assert ssl_medicalimaging_fewshot(_case("mine", 3)).n_way == 3
    assert ssl_medicalimaging_fewshot(_case("mine", 8)).n_way == 5


def _indexed_splits(sizes: dict[str, int]) -> dict[str, SplitFeatures]:
    """Splits whose single feature is the row's index in the pool (train, val, test order)."""
    out, start = {}, 0
    for name, size in sizes.items():
        rows = np.arange(start, start + size, dtype=np.float64)[:, None]
        out[name] = SplitFeatures(rows, np.arange(size) % 2)
        start += size
    return out


def test_submeta_cap_keeps_10001_images_of_the_peer_train_block_first() -> None:
    config = ssl_medicalimaging_fewshot(_case("eyepacs", 2, 2))
    # the peer's train block (train + val) is smaller than the cap: all of it, then test
    small = {"train": 6000, "val": 1500, "test": 4000}
    pool, details = build_pool(_indexed_splits(small), config.pool, config.pool_cap, config.seed)
    rows = pool.features[:, 0].astype(np.int64)
    assert len(rows) == 10_001 == len(np.unique(rows))
    assert set(range(7500)) <= set(rows.tolist())
    assert (rows >= 7500).sum() == 2501
    assert details["pool_size_uncapped"] == 11_500

    # the train block alone exceeds the cap: no test image, a uniform subset of train + val
    large = {"train": 9000, "val": 2000, "test": 3000}
    pool, _ = build_pool(_indexed_splits(large), config.pool, config.pool_cap, config.seed)
    rows = pool.features[:, 0].astype(np.int64)
    assert len(np.unique(rows)) == 10_001 and rows.max() < 11_000
    val_kept = int(((rows >= 9000) & (rows < 11_000)).sum())
    expected = 10_001 * 2000 / 11_000
    sd = math.sqrt(expected * (9000 / 11_000) * (999 / 10_999))
    assert abs(val_kept - expected) < 5 * sd  # not the first 10,001 rows (that keeps 1,001)
    # labels travel with their rows
    assert np.array_equal(
        pool.labels, np.concatenate([np.arange(n) % 2 for n in large.values()])[rows]
    )


def test_cap_is_seeded_and_a_noop_on_small_pools() -> None:
    sizes = {"train": 50, "val": 10, "test": 30}
    assert np.array_equal(capped_indices(sizes, 100, 0), np.arange(90))
    first, again = capped_indices(sizes, 40, 3), capped_indices(sizes, 40, 3)
    assert np.array_equal(first, again) and first.max() < 60
    assert not np.array_equal(first, capped_indices(sizes, 40, 4))
    with pytest.raises(ValueError, match="pool_cap"):
        FewShotConfig(pool_cap=0)
    assert FewShotConfig(pool_cap=7).to_dict()["pool_cap"] == 7


def test_run_case_applies_pool_and_cap_of_the_preset() -> None:
    case = _case("stoic", 2, 2)
    splits = _splits(2, 2, {"train": 40, "val": 10, "test": 20}, dict.fromkeys(SIZES, 1.0))
    case.features = lambda names: {name: splits[name] for name in names}
    config = FewShotConfig(**{**ssl_medicalimaging_fewshot(case).to_dict(), "pool_cap": 100})
    result = run_case(case, config)
    assert result.details["pool_size_uncapped"] == 140
    assert result.details["pool_size"] == 100 and result.details["pool_cap"] == 100
    assert result.details["pool_split_sizes"] == {"train": 80, "val": 20, "test": 40}


def test_registered_presets_and_their_image_transform() -> None:
    from timm.data import create_transform
    from torchvision import transforms

    st, sm = get_preset("fewshot", "ssl-transfer"), get_preset("fewshot", "ssl-medicalimaging")
    assert st.source == "linusericsson/ssl-transfer@416913f:few_shot.py"
    assert sm.source.startswith("jonahanton/SSL_medicalimaging@77fceef:")

    def case_of(dataset: str) -> SimpleNamespace:
        model = get_model_card("resnet50.tv_in1k")  # ImageNet's mean / std, as the peers'
        return SimpleNamespace(
            case=SimpleNamespace(dataset=SimpleNamespace(name=dataset), model=model)
        )

    squash = st.overrides(case_of("shenzhen"))
    imagenet = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}
    assert squash == ssl_medicalimaging_preprocessing("shenzhen") | imagenet
    assert sm.overrides(case_of("shenzhen")) == squash
    assert sm.overrides(case_of("eyepacs"))["interpolation"] == "bicubic"  # a sub_meta dataset
    assert st.overrides(case_of("eyepacs")) == squash

    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 180, 3), np.uint8))
    peer = transforms.Compose(
        [
            transforms.Resize([int(224 * 1.15)] * 2),
            transforms.CenterCrop(224),
            transforms.ToTensor(),
        ]
    )
    ours = create_transform(
        input_size=(3, squash["input_size"], squash["input_size"]),
        interpolation=squash["interpolation"],
        crop_pct=squash["crop_pct"],
        crop_mode=squash["crop_mode"],
        mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0),
    )
    assert torch.allclose(ours(image), peer(image), atol=1e-6)
