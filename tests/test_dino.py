"""DINO pretraining on a target (derived cards with ``protocol: dino``).

The oracles write ChrisMats/medical_transformers@ecd460a's steps out in plain torch:
``DINOLoss.forward`` and ``update_center`` (self_supervised/DINO/models.py),
``DINOTrainer.global_step`` (self_supervised/DINO/trainer.py: clip, cancel the last
layer's gradients in the first epoch, Adam step, and, in the peer's code, a second clip
and step on the same gradients; then the EMA of every student parameter), its
``CosineSchedulerWithWarmup`` and the teacher temperature schedule.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors import safe_open
from torch import nn

from harness.config.card_fields import CardError
from harness.config.cards import get_model_card
from harness.config.model_cards import Preprocessing
from harness.data.npz import SplitData
from harness.features import extract
from harness.protocols.base import TaskInfo
from harness.protocols.dino import DinoConfig, dino_config
from harness.protocols.dino.head import DinoHead, DinoLoss, cosine_schedule, teacher_temperatures
from harness.protocols.dino.train import (
    DinoNetwork,
    dino_loss,
    dino_step,
    knn_val_score,
    param_groups,
    query_rows,
    selection_sets,
    with_drop_path,
)
from harness.protocols.dino.views import local_size, multi_crop_transform
from harness.zoo.build import build_model
from harness.zoo.derived import derived_checkpoint, plan

PRE = Preprocessing(16, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), "bilinear", 0.875)


def tiny_backbone() -> nn.Module:
    """Conv, batch norm (so the views' grouping matters), pooled features of width 6."""
    return nn.Sequential(
        nn.Conv2d(3, 6, 3), nn.BatchNorm2d(6), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()
    )


def networks(seed: int = 0) -> tuple[DinoNetwork, DinoNetwork]:
    torch.manual_seed(seed)
    student = DinoNetwork(tiny_backbone(), DinoHead(6, out_dim=32, hidden_dim=24, bottleneck_dim=8))
    teacher = copy.deepcopy(student).requires_grad_(False)
    return student.train(), teacher.train()


def views(batch: int = 4, local: int = 2, seed: int = 1) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    big = [torch.randn(batch, 3, 12, 12, generator=generator) for _ in range(2)]
    return big + [torch.randn(batch, 3, 6, 6, generator=generator) for _ in range(local)]


# ------------------------------------------------------------------ the peer, re-implemented


def peer_loss(
    student_out: torch.Tensor, teacher_out: torch.Tensor, center: torch.Tensor, temp: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """DINOLoss.forward: (loss, the updated centre)."""
    n_crops = len(student_out) // (len(teacher_out) // 2)
    student = (student_out / 0.1).chunk(n_crops)
    teacher = F.softmax((teacher_out - center) / temp, dim=-1).detach().chunk(2)
    total, n = 0.0, 0
    for iq, q in enumerate(teacher):
        for v in range(len(student)):
            if v == iq:
                continue
            total = total + torch.sum(-q * F.log_softmax(student[v], dim=-1), dim=-1).mean()
            n += 1
    batch_center = torch.sum(teacher_out, dim=0, keepdim=True) / len(teacher_out)
    return total / n, center * 0.9 + batch_center * 0.1


def peer_forward(net: DinoNetwork, crops: list[torch.Tensor]) -> torch.Tensor:
    """The peer's resnet path: the crops of one resolution through the backbone together."""
    big = net.backbone(torch.cat(crops[:2]))
    if len(crops) == 2:
        return net.head(big)
    return net.head(torch.cat([big, net.backbone(torch.cat(crops[2:]))]))


def peer_global_step(
    student: DinoNetwork,
    teacher: DinoNetwork,
    optimizer: torch.optim.Optimizer,
    crops: list[torch.Tensor],
    center: torch.Tensor,
    temp: float,
    epoch_1based: int,
    beta: float,
) -> torch.Tensor:
    """DINOTrainer.global_step (fp32 branch) and DINO.ema_update; returns the new centre."""
    optimizer.zero_grad()
    with torch.no_grad():
        teacher_out = peer_forward(teacher, crops[:2]).detach()
    loss, center = peer_loss(peer_forward(student, crops), teacher_out, center, temp)
    loss.backward()
    nn.utils.clip_grad_norm_(student.parameters(), 1.0)
    if epoch_1based <= 1:
        for name, p in student.named_parameters():
            if "last_layer" in name:
                p.grad = None
    optimizer.step()
    nn.utils.clip_grad_norm_(student.parameters(), 1.0)  # the second clip and step
    optimizer.step()
    for online, target in zip(student.parameters(), teacher.parameters(), strict=True):
        target.data = target.data * beta + (1 - beta) * online.detach().data
    return center


# ------------------------------------------------------------------------------ the tests


def test_loss_is_the_peers_cross_entropy_with_its_centre() -> None:
    generator = torch.Generator().manual_seed(3)
    student_out = torch.randn(8 * 5, 32, generator=generator)
    teacher_out = torch.randn(2 * 5, 32, generator=generator)
    temps = teacher_temperatures(0.04, 0.07, 30, 1000)
    loss_fn = DinoLoss(32, 8, temps)
    loss_fn.center = torch.randn(1, 32, generator=generator) * 0.1
    expected, center = peer_loss(student_out, teacher_out, loss_fn.center.clone(), temps[3])
    assert float(loss_fn(student_out, teacher_out, 3)) == pytest.approx(float(expected), abs=1e-6)
    torch.testing.assert_close(loss_fn.center, center, rtol=0, atol=1e-7)


@pytest.mark.parametrize("epoch", [0, 1])
def test_one_iteration_is_the_peers_global_step_with_its_second_adam_step(epoch: int) -> None:
    config = dataclasses.replace(DinoConfig(), adam_steps_per_iteration=2, out_dim=32)
    student, teacher = networks()
    peer_student, peer_teacher = copy.deepcopy(student), copy.deepcopy(teacher)
    temps = teacher_temperatures(0.04, 0.07, 30, 1000)
    loss_fn = DinoLoss(32, 4, temps)
    optimizer = torch.optim.Adam(param_groups(student, 1e-5), lr=1e-3)
    peer_optimizer = torch.optim.Adam(param_groups(peer_student, 1e-5), lr=1e-3)
    crops = views()
    center = torch.zeros(1, 32)
    for step in range(2):
        dino_step(student, teacher, loss_fn, optimizer, crops, epoch, 0.9, config)
        center = peer_global_step(
            peer_student, peer_teacher, peer_optimizer, crops, center, temps[epoch], epoch + 1, 0.9
        )
        for name, value in student.state_dict().items():
            torch.testing.assert_close(value, peer_student.state_dict()[name], rtol=0, atol=1e-6)
        for name, value in teacher.state_dict().items():
            torch.testing.assert_close(value, peer_teacher.state_dict()[name], rtol=0, atol=1e-6)
        torch.testing.assert_close(loss_fn.center, center, rtol=0, atol=1e-7)
        last = optimizer.state.get(student.head.last_layer.weight_v, {})
        # frozen in the first epoch: Adam never saw the last layer; else two steps an iteration
        assert int(last.get("step", 0)) == (0 if epoch == 0 else 2 * (step + 1))
    single = dataclasses.replace(config, adam_steps_per_iteration=1)
    student, teacher = networks()
    optimizer = torch.optim.Adam(param_groups(student, 1e-5), lr=1e-2)
    dino_step(student, teacher, DinoLoss(32, 4, temps), optimizer, crops, epoch, 0.9, single)
    weight = student.backbone[0].weight
    assert int(optimizer.state[weight]["step"]) == 1


def test_schedules_are_the_peers() -> None:
    values = cosine_schedule(0.99, 1.0, 40)
    i = np.arange(40)
    np.testing.assert_allclose(values, 1.0 + 0.5 * (0.99 - 1.0) * (1 + np.cos(np.pi * i / 40)))
    assert values[0] == 0.99 and values[-1] < 1.0
    # the peer's schedule for 1000 epochs: a 25-epoch run ends inside the warm-up
    peer = teacher_temperatures(0.04, 0.07, 30, 1000)
    assert len(peer) == 1000 and peer[24] == pytest.approx(0.04 + 24 * 0.03 / 29)
    preset = dino_config("paper", "medical-transformers", 0)
    assert (preset.adam_steps_per_iteration, preset.ema_schedule_offset) == (2, 1)
    assert preset.schedule_epochs == 1000 and preset.teacher_warmup_epochs == 30
    default = dino_config("paper", None, 0)
    assert default.schedule_epochs == 25 and default.teacher_warmup_epochs == 25
    # the run's loss reads them: the preset ends its 25 epochs at 0.0648, the default at 0.07
    assert dino_loss(preset).temperatures[24] == pytest.approx(0.04 + 24 * 0.03 / 29)
    assert dino_loss(default).temperatures[24] == pytest.approx(0.07)
    assert dino_loss(default).n_crops == 8 and dino_loss(preset).center.shape == (1, 4096)
    with pytest.raises(ValueError, match="unknown dino preset 'ssl-transfer'"):
        dino_config("paper", "ssl-transfer", 0)


def test_head_is_a_unit_row_weight_norm_layer_after_l2_normalisation() -> None:
    torch.manual_seed(0)
    head = DinoHead(10, out_dim=20, hidden_dim=16, bottleneck_dim=4)
    reference = nn.utils.parametrizations.weight_norm(nn.Linear(4, 20, bias=False))
    reference.parametrizations.weight.original0.data.fill_(1.0)
    reference.parametrizations.weight.original1.data.copy_(head.last_layer.weight_v.data)
    x = torch.randn(7, 10)
    expected = reference(F.normalize(head.mlp(x), dim=-1))
    torch.testing.assert_close(head(x), expected, rtol=0, atol=1e-6)
    assert all(
        float(layer.bias.detach().abs().max()) == 0 for layer in head.mlp if hasattr(layer, "bias")
    )


def test_multi_crop_views_and_the_vit_student_stochastic_depth() -> None:
    config = DinoConfig(local_crops=3)
    transform = multi_crop_transform(PRE, config)
    image = np.random.default_rng(0).integers(0, 256, (20, 24, 3), dtype=np.uint8)
    torch.manual_seed(5)
    first = transform(image)
    torch.manual_seed(5)
    again = transform(image)
    assert local_size(PRE, config) == 7  # 96 / 224 of 16 px
    assert [tuple(v.shape) for v in first] == [(3, 16, 16)] * 2 + [(3, 7, 7)] * 3
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    grey = dataclasses.replace(PRE, channels="grey-first")
    plain = multi_crop_transform(grey, config)(image[..., 0])
    assert all(float(v[1:].abs().max()) == 0 for v in plain)  # channels 1, 2 normalise to 0
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, depth=4)
    with_drop_path(vit, 0.1)
    rates = [getattr(block.drop_path1, "drop_prob", 0.0) for block in vit.blocks]
    assert rates == pytest.approx([0.0, 0.1 / 3, 0.2 / 3, 0.1])
    assert with_drop_path(tiny_backbone(), 0.1)[0].weight is not None


def _card_folder(tmp_path: Path, preset: str | None = None) -> Path:
    folder = tmp_path / "cards" / "models"
    folder.mkdir(parents=True)
    line = f"      preset: {preset}\n" if preset else ""
    (folder / "dino.yaml").write_text(
        "models:\n"
        "  - name: tf_efficientnet_lite0.in1k_pip_dino_demo_modality\n"
        "    weights:\n"
        "      source: derived\n"
        "      parent: tf_efficientnet_lite0.in1k_pip\n"
        "      dataset: demo_modality\n"
        "      protocol: dino\n"
        "      profile: smoke\n"
        "      seed: 0\n" + line + "    category: domain-adapted\n"
    )
    return folder.parent


def test_a_dino_card_derives_the_teacher_backbone_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MEDXFER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MEDXFER_CARDS", str(_card_folder(tmp_path)))
    card = get_model_card("tf_efficientnet_lite0.in1k_pip_dino_demo_modality")
    derivation = plan(card)
    assert derivation.protocol == "dino" and derivation.preset_id is None
    assert derivation.key_payload()["protocol"] == {"name": "dino", "version": 1, "preset": None}
    path = derived_checkpoint(card, device="cpu")
    with safe_open(str(path), "pt") as handle:
        metadata = handle.metadata()
        keys = list(handle.keys())
    assert metadata["protocol"] == "dino" and metadata["preset"] == "medxfer"
    assert metadata["steps"] == str(2 * (96 // 8))  # smoke: 96 train images, batches of 8
    assert math.isfinite(float(metadata["val_score"]))
    assert keys and all(key.startswith("backbone.") for key in keys)  # no head, no student
    derived = build_model(card)
    parent = build_model(get_model_card("tf_efficientnet_lite0.in1k_pip"))
    assert derived.feature_dim == parent.feature_dim
    moved = [
        float((a - b).abs().max())
        for (_, a), (_, b) in zip(
            derived.module.state_dict().items(), parent.module.state_dict().items(), strict=True
        )
        if a.is_floating_point()
    ]
    assert max(moved) > 0
    assert derived_checkpoint(card, device="cpu") == path  # made once, then read


def test_the_medical_transformers_preset_changes_the_key_and_an_unknown_one_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MEDXFER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MEDXFER_CARDS", str(_card_folder(tmp_path / "a", "medical-transformers")))
    card = get_model_card("tf_efficientnet_lite0.in1k_pip_dino_demo_modality")
    derivation = plan(card)
    assert derivation.preset_id == ("medical-transformers", 2)
    assert derivation.config.adam_steps_per_iteration == 2
    assert derivation.config.knn_selection == "peer-batches"
    # the fine-tuning preset of that name gives the preprocessing: the target's statistics
    # (none for a demo dataset, so the card's mean stands) at the feature-reuse geometry
    assert derivation.preprocessing.interpolation == "bilinear"
    monkeypatch.setenv("MEDXFER_CARDS", str(_card_folder(tmp_path / "b", "vtab")))
    with pytest.raises(
        CardError,
        match=r"tf_efficientnet_lite0\.in1k_pip_dino_demo_modality.*unknown dino preset 'vtab'",
    ):
        plan(get_model_card("tf_efficientnet_lite0.in1k_pip_dino_demo_modality"))


def test_medxfer_derive_writes_a_dino_card() -> None:
    from argparse import Namespace

    from harness.derive_cli import _default_name, _entry

    args = Namespace(
        parent="resnet50.tv_in1k", dataset="aptos2019", protocol="dino", profile="paper",
        preset="medical-transformers", seed=0,
    )  # fmt: skip
    name = _default_name(args, "resnet50.tv_in1k")
    assert name == "resnet50.tv_in1k_dino_aptos2019_paper_medical-transformers"
    entry = _entry(args, name, "domain-adapted", None)
    assert entry["weights"]["protocol"] == "dino"
    assert (
        "protocol"
        not in _entry(Namespace(**{**vars(args), "protocol": "finetune"}), name, "x", None)[
            "weights"
        ]
    )


def test_a_run_is_seeded_and_leaves_the_callers_rng_alone() -> None:
    from harness.data.npz import SplitData
    from harness.protocols.base import TaskInfo
    from harness.protocols.dino import dino_pretrain

    rng = np.random.default_rng(0)
    train = SplitData(rng.integers(0, 256, (12, 10, 10, 3), dtype=np.uint8), np.arange(12) % 2)
    val = SplitData(rng.integers(0, 256, (6, 10, 10, 3), dtype=np.uint8), np.arange(6) % 2)
    task = TaskInfo("binary", 2, "accuracy", ("accuracy",))
    config = DinoConfig(epochs=2, batch_size=4, warmup_iters=2, out_dim=16, knn_k=5)
    torch.manual_seed(123)
    backbone = tiny_backbone()
    before = torch.random.get_rng_state()
    runs = [dino_pretrain(backbone, 6, train, val, task, config, PRE, "cpu") for _ in "ab"]
    assert torch.equal(torch.random.get_rng_state(), before)
    assert runs[0].iterations == 2 * (12 // 4) and len(runs[0].history) == 2
    assert runs[0].best_epoch in (1, 2) and runs[0].val_score == max(runs[0].history)
    for name, value in runs[0].backbone_state.items():
        assert torch.equal(value, runs[1].backbone_state[name]), name
    with pytest.raises(ValueError, match="fewer than one batch of 16"):
        dino_pretrain(
            tiny_backbone(),
            6,
            train,
            val,
            task,
            dataclasses.replace(config, batch_size=16),
            PRE,
            "cpu",
        )


def test_a_val_split_without_a_score_keeps_the_first_epoch() -> None:
    from harness.data.npz import SplitData
    from harness.protocols.base import TaskInfo
    from harness.protocols.dino import dino_pretrain

    rng = np.random.default_rng(1)
    train = SplitData(rng.integers(0, 256, (8, 10, 10, 3), dtype=np.uint8), np.arange(8) % 2)
    val = SplitData(rng.integers(0, 256, (4, 10, 10, 3), dtype=np.uint8), np.zeros(4, np.int64))
    task = TaskInfo("binary", 2, "roc_auc", ("roc_auc",))  # one class in val: ROC AUC is NaN
    config = DinoConfig(epochs=2, batch_size=4, warmup_iters=1, out_dim=16, knn_k=3)
    result = dino_pretrain(tiny_backbone(), 6, train, val, task, config, PRE, "cpu")
    assert all(math.isnan(score) for score in result.history)
    assert result.best_epoch == 1 and math.isnan(result.val_score) and result.backbone_state


def _split(n: int, seed: int, classes: int = 3) -> SplitData:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 10, 10, 3), dtype=np.uint8)
    return SplitData(images, np.arange(n) % classes)


def test_the_peer_batches_selection_holds_what_the_peers_loaders_hold() -> None:
    config = DinoConfig(batch_size=8, knn_selection="peer-batches", seed=3)
    train, val, small = _split(20, 0), _split(19, 1), _split(5, 2)
    bank, queries = selection_sets(train, val, config)
    # the feature-bank loader: the val loader's settings (drop_last) without its shuffle
    assert queries is val and len(bank) == 16
    assert np.shares_memory(bank.images, train.images)  # a view, not a copy
    assert np.array_equal(bank.images, train.images[:16])
    assert np.array_equal(bank.labels, train.labels[:16])
    # the val loader: shuffled, drop_last: two full batches of distinct rows per epoch
    epochs = [query_rows(19, config, epoch) for epoch in range(3)]
    for rows in epochs:
        assert len(rows) == 16 and len(np.unique(rows)) == 16 and rows.max() < 19
    assert not all(np.array_equal(epochs[0], rows) for rows in epochs[1:])
    assert np.array_equal(epochs[1], query_rows(19, config, 1))  # seeded
    # fewer val images than a batch: the peer's val loader is empty (it would select on
    # the test split); refused, naming the split and the batch
    with pytest.raises(ValueError, match="val split holds 5 images, less than one batch of 8"):
        selection_sets(train, small, config)
    default = dataclasses.replace(config, knn_selection="all")
    assert selection_sets(train, small, default) == (train, small)
    assert query_rows(19, default, 0) is None
    with pytest.raises(ValueError, match="knn_selection must be one of"):
        DinoConfig(knn_selection="shuffled")


def test_the_peer_batches_score_is_the_peers_knn_predict_on_those_rows() -> None:
    """medical_transformers' ``knn_predict`` (single-label branch) and its accuracy, written
    out in torch on the bank's and the scored queries' normalised features."""
    torch.manual_seed(0)
    backbone = tiny_backbone().eval()
    config = DinoConfig(batch_size=8, knn_k=5, knn_selection="peer-batches", seed=1)
    train, val = _split(20, 0), _split(19, 1)
    task = TaskInfo("multiclass", 3, "accuracy", ("accuracy",))
    bank, queries = selection_sets(train, val, config)
    rows = query_rows(len(queries), config, 0)
    where = torch.device("cpu")
    score = knn_val_score(backbone, bank, queries, task, config, PRE, where, rows)

    bank_features = F.normalize(
        torch.from_numpy(extract(backbone, train.images[:16], PRE, where, 8)), dim=1
    )
    features = F.normalize(
        torch.from_numpy(extract(backbone, val.images, PRE, where, 8))[rows], dim=1
    )
    labels = torch.from_numpy(train.labels[:16])
    weight, index = (features @ bank_features.T).topk(k=5, dim=-1)
    neighbours = torch.gather(labels.expand(len(features), -1), dim=-1, index=index)
    one_hot = torch.zeros(len(features) * 5, 3).scatter(-1, neighbours.view(-1, 1), 1.0)
    votes = (one_hot.view(len(features), -1, 3) * (weight / 0.1).exp().unsqueeze(-1)).sum(1)
    predicted = votes.argsort(dim=-1, descending=True)[:, 0].numpy()
    assert score == pytest.approx(float(np.mean(predicted == val.labels[rows])), abs=1e-9)
    everything = knn_val_score(backbone, train, val, task, config, PRE, where)
    assert 0 <= everything <= 1


def test_a_peer_batches_run_keeps_the_best_epoch_of_its_subsets() -> None:
    from harness.protocols.dino import dino_pretrain

    config = DinoConfig(
        epochs=2, batch_size=4, warmup_iters=2, out_dim=16, knn_k=3, knn_selection="peer-batches"
    )
    train, val = _split(10, 0, 2), _split(7, 1, 2)
    task = TaskInfo("binary", 2, "accuracy", ("accuracy",))
    result = dino_pretrain(tiny_backbone(), 6, train, val, task, config, PRE, "cpu")
    # one full batch of 4 of the 7 val images per epoch: accuracies in quarters
    assert len(result.history) == 2
    assert all(score * 4 == round(score * 4) for score in result.history)
    assert result.val_score == max(result.history)
    with pytest.raises(ValueError, match="val split holds 3 images"):
        dino_pretrain(tiny_backbone(), 6, train, _split(3, 2, 2), task, config, PRE, "cpu")


def test_the_presets_rounding_and_initial_best_pick_the_epoch_as_the_peer() -> None:
    """``BYOLTrainer.evaluate``: scores rounded to 3 decimals, a strictly higher one
    replaces the kept backbone, and the best starts at 0 with the parent's backbone."""
    from harness.protocols.dino import dino_pretrain

    train, val = _split(12, 0, 2), _split(7, 1, 2)
    task = TaskInfo("binary", 2, "roc_auc", ("roc_auc",))
    base = DinoConfig(epochs=3, batch_size=4, warmup_iters=2, out_dim=16, knn_k=5)
    torch.manual_seed(0)
    backbone = tiny_backbone()
    raw = dino_pretrain(backbone, 6, train, val, task, base, PRE, "cpu")
    rounded = dino_pretrain(
        backbone, 6, train, val, task, dataclasses.replace(base, val_round=3), PRE, "cpu"
    )
    assert rounded.history == [round(score, 3) for score in raw.history]
    assert any(round(score, 3) != score for score in raw.history)  # ROC AUC in twelfths
    first = max(rounded.history)
    assert rounded.best_epoch == rounded.history.index(first) + 1  # ties keep the earlier
    # nothing beats the initial best: the parent's backbone is what is kept
    parent = dino_pretrain(
        backbone, 6, train, val, task, dataclasses.replace(base, initial_best=1.5), PRE, "cpu"
    )
    assert parent.best_epoch == 0 and math.isnan(parent.val_score)
    for name, value in backbone.state_dict().items():
        assert torch.equal(parent.backbone_state[name], value), name
    beaten = dino_pretrain(
        backbone, 6, train, val, task, dataclasses.replace(base, initial_best=-1.0), PRE, "cpu"
    )
    assert beaten.best_epoch == raw.best_epoch and beaten.val_score == raw.val_score
    with pytest.raises(ValueError, match="val_round must be >= 0"):
        DinoConfig(val_round=-1)
    preset = dino_config("paper", "medical-transformers", 0)
    assert (preset.val_round, preset.initial_best) == (3, 0.0)
    assert {"val_round", "initial_best", "knn_selection"}.isdisjoint(
        dino_config("paper", None, 0).to_dict()
    )  # the default's derived keys are those of before these fields
