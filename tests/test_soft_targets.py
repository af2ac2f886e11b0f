"""CheXpert label-smoothed uncertain labels (LSR-Ones / LSR-Zeros): policy and targets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from harness.config.card_fields import CardError
from harness.data.label_policies import uncertain
from harness.data.registry import LABEL_POLICIES, LabelPolicySpec, load_entries
from harness.data.soft_targets import draw_targets, expected_targets, take_soft
from harness.data.table import ArrayImages, DatasetContext, RawDataset, SoftTargets

CLASSES = ("Edema", "Pleural Effusion")
# one row per code pair: 1, 0, -1 (uncertain), blank
EDEMA = ["1.0", "0.0", "-1.0", "", "-1.0"]
EFFUSION = ["-1.0", "", "1.0", "0.0", "-1.0"]


def _raw() -> RawDataset:
    pixels = np.zeros((len(EDEMA), 4, 4), dtype=np.uint8)
    images = ArrayImages((len(EDEMA),), lambda: [pixels])
    columns = {"Edema": np.array(EDEMA, dtype=object), "Pleural Effusion": np.array(EFFUSION)}
    return RawDataset(columns=columns, images=images, digest="x")


def _ctx(task: str = "multilabel") -> DatasetContext:
    classes = CLASSES if task == "multilabel" else ("absent", "present")
    return DatasetContext("card.yaml", "tiny", task, classes, Path("."))


def _policy(**params: object) -> LabelPolicySpec:
    load_entries()
    return LABEL_POLICIES.parse({"name": "uncertain", **params}, "card.yaml")


@pytest.mark.parametrize(
    "option, hard, low, high",
    [("lsr_ones", 1, 0.55, 0.85), ("lsr_zeros", 0, 0.0, 0.3)],
)
def test_lsr_policy_labels_each_code(option: str, hard: int, low: float, high: float) -> None:
    labels = uncertain(_policy(uncertain=option).params, _raw(), _ctx())
    u = hard
    # 1 -> 1, 0 -> 0, blank -> 0 (blank: zeros), -1 -> the hard label the metrics score
    np.testing.assert_array_equal(labels.values, [[1, u], [0, 0], [u, 1], [0, 0], [u, u]])
    assert labels.values.dtype == np.int64 and labels.keep is None
    assert labels.soft is not None
    np.testing.assert_array_equal(
        labels.soft.mask,
        [[False, True], [False, False], [True, False], [False, False], [True, True]],
    )
    assert (labels.soft.low, labels.soft.high) == (low, high)


def test_hard_options_carry_no_soft_targets() -> None:
    for option in ("ones", "zeros", "drop"):
        assert uncertain(_policy(uncertain=option).params, _raw(), _ctx()).soft is None


def test_lsr_binary_task_marks_one_column() -> None:
    params = _policy(uncertain="lsr_ones", columns=["Edema"], lsr_range=[0.6, 0.7]).params
    labels = uncertain(params, _raw(), _ctx("binary"))
    np.testing.assert_array_equal(labels.values, [1, 0, 1, 0, 1])
    assert labels.soft is not None and labels.soft.mask.tolist() == [0, 0, 1, 0, 1]
    assert (labels.soft.low, labels.soft.high) == (0.6, 0.7)


@pytest.mark.parametrize(
    "params, message",
    [
        ({"uncertain": "ones", "lsr_range": [0.5, 0.9]}, "applies only to uncertain: lsr_ones"),
        ({"uncertain": "lsr_ones", "lsr_range": [0.9, 0.5]}, "0 <= low <= high <= 1"),
        ({"uncertain": "lsr_ones", "lsr_range": [0.5, 1.5]}, "0 <= low <= high <= 1"),
    ],
)
def test_lsr_range_is_checked_when_the_card_loads(params: dict, message: str) -> None:
    with pytest.raises(CardError, match=r"card\.yaml") as error:
        _policy(**params)
    assert message in str(error.value)


def test_expected_targets_put_marked_entries_at_the_midpoint() -> None:
    soft = SoftTargets(np.array([[True, False], [False, True]]), 0.55, 0.85)
    targets = expected_targets(np.array([[1, 0], [0, 1]]), soft)
    np.testing.assert_allclose(targets, [[0.7, 0.0], [0.0, 0.7]])
    np.testing.assert_array_equal(expected_targets(np.array([1, 0]), None), [1.0, 0.0])
    assert take_soft(soft, np.array([1])).mask.tolist() == [[False, True]]
    assert take_soft(None, np.array([0])) is None


def test_midpoint_gives_the_expected_bce_over_the_draws() -> None:
    """BCE is linear in its target: E_t[BCE(t, p)] over U(a, b) is BCE((a + b) / 2, p)."""
    p = torch.tensor([0.2, 0.5, 0.9], dtype=torch.float64)
    a, b = 0.55, 0.85
    t = torch.linspace(a, b, 1001, dtype=torch.float64)[:, None].expand(-1, 3)
    losses = torch.nn.functional.binary_cross_entropy(p.expand(1001, 3), t, reduction="none")
    trapezoid = torch.trapezoid(losses, t[:, 0], dim=0) / (b - a)
    mid = torch.nn.functional.binary_cross_entropy(
        p, torch.full((3,), (a + b) / 2, dtype=p.dtype), reduction="none"
    )
    torch.testing.assert_close(trapezoid, mid, rtol=1e-9, atol=1e-9)


def test_draws_stay_in_range_change_per_call_and_reproduce_under_a_seed() -> None:
    soft = SoftTargets(np.zeros((0,), dtype=bool), 0.55, 0.85)
    labels = torch.tensor([[1, 0], [1, 1]] * 200)
    mask = torch.tensor([[True, False], [False, True]] * 200)
    gen = torch.Generator().manual_seed(3)
    first, second = draw_targets(labels, mask, soft, gen), draw_targets(labels, mask, soft, gen)
    drawn = first[mask]
    assert drawn.min() >= 0.55 and drawn.max() <= 0.85
    assert abs(float(drawn.mean()) - 0.7) < 0.02  # 400 draws: sd of the mean about 0.004
    torch.testing.assert_close(first[~mask], labels[~mask].float())
    assert not torch.equal(first, second)  # a fresh draw each time the image is loaded
    again = draw_targets(labels, mask, soft, torch.Generator().manual_seed(3))
    torch.testing.assert_close(again, first)
    torch.testing.assert_close(draw_targets(labels, mask, None), labels.float())


def test_lsr_marks_survive_prepare_and_reload_on_a_chexpert_layout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real CheXpert CSV layout, prepared and loaded back: hard labels, marked entries."""
    import csv

    from test_data_sources import _chexpert_card, _write_chexpert

    from harness.data.prepare import load_splits

    monkeypatch.setenv("MEDXFER_HOME", str(tmp_path / "home"))
    _write_chexpert(tmp_path / "chexpert")
    splits = load_splits(_chexpert_card(tmp_path, "lsr_ones", "chexpert_lsr"))
    with open(tmp_path / "chexpert" / "CheXpert-v1.0-small" / "train.csv") as handle:
        codes = [(r["Edema"], r["Pleural Effusion"]) for r in csv.DictReader(handle)]
    hard = {"1.0": 1, "0.0": 0, "-1.0": 1, "": 0}
    seen = 0
    for split in ("train", "val"):
        data = splits[split]
        assert data.soft is not None and (data.soft.low, data.soft.high) == (0.55, 0.85)
        for image, label, mask in zip(data.images, data.labels, data.soft.mask, strict=True):
            row = codes[int(image[0, 0]) // 10]  # each image is 10 x its row in train.csv
            assert label.tolist() == [hard[c] for c in row]
            assert mask.tolist() == [c == "-1.0" for c in row]
            seen += 1
    assert seen == len(codes) and any("-1.0" in pair for pair in codes)
    # a second load reads the prepared archive: the marks come back from it
    again = load_splits(_chexpert_card(tmp_path, "lsr_ones", "chexpert_lsr"))
    np.testing.assert_array_equal(again["train"].soft.mask, splits["train"].soft.mask)
    subset = again["train"].take(np.array([1, 0]))
    np.testing.assert_array_equal(subset.soft.mask, again["train"].soft.mask[[1, 0]])


def test_linear_probe_fits_label_smoothed_entries_at_their_midpoint() -> None:
    """A full-batch fit on LSR targets equals the fit on the midpoint targets; scores use
    the hard labels."""
    from harness.protocols.base import SplitFeatures, TaskInfo
    from harness.protocols.linear import LinearConfig, run

    rng = np.random.default_rng(0)
    task = TaskInfo("multilabel", 2, "roc_auc", ("roc_auc",))

    def split(n: int) -> SplitFeatures:
        y = rng.integers(0, 2, (n, 2))
        x = rng.normal(size=(n, 5)) + y @ np.array([[1.5, 0, 0, 0, 0], [0, 1.5, 0, 0, 0]])
        return SplitFeatures(x.astype(np.float32), y)

    train, val, test = split(80), split(40), split(60)
    mask = np.zeros((80, 2), dtype=bool)
    mask[::4, 0] = True
    config = LinearConfig(c_values=(0.01, 0.1, 1.0))
    smoothed = run(SplitFeatures(train.features, train.labels, None, SoftTargets(mask, 0.55, 0.85)),
                   val, test, task, config)  # fmt: skip
    assert smoothed.details["label_smoothed_entries"] == 20
    # the same fit, by hand: the path solver on float targets at the midpoint 0.7
    from harness.protocols.linear import _run

    targets = train.labels.astype(np.float64)
    targets[mask] = 0.7
    by_hand = _run(
        train.features.astype(np.float64), train.labels, val.features.astype(np.float64),
        val.labels, test.features.astype(np.float64), test.labels, task, config, "roc_auc",
        (targets, val.labels),
    )  # fmt: skip
    assert smoothed.metrics == by_hand.metrics
    hard = run(train, val, test, task, config)
    assert hard.details["label_smoothed_entries"] == 0
    assert smoothed.metrics["roc_auc"] != hard.metrics["roc_auc"]
    with pytest.raises(ValueError, match="need solver 'path'"):
        run(SplitFeatures(train.features, train.labels, None, SoftTargets(mask, 0.55, 0.85)),
            val, test, task, LinearConfig(c_values=(0.1,), solver="sklearn"))  # fmt: skip
