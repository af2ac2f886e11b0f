"""The published-value tolerance rule (published-v1): its parts, the check, its false-failure rate."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from harness.baselines import check
from harness.baselines import expected as ex
from harness.baselines.published import (
    PUBLISHED_RULE,
    PublishedIntervalError,
    published_se,
    reproduction_se,
    two_sided_rate,
)

CASE = "fewshot/shenzhen/resnet50.tv_in1k"


def _record(value: float, device: str = "cpu", **metrics: float) -> dict[str, Any]:
    return {
        "case_id": CASE,
        "profile": "paper",
        "details": {"device_class": device},
        "protocol": {"name": "fewshot", "version": 1, "preset": {"name": "x", "version": 1}},
        "dataset": {"name": "shenzhen", "version": 1, "n": {"test": 100}},
        "primary_metric": "accuracy",
        "primary_value": value,
        "metrics": {"accuracy": value, **metrics},
    }


def _file(tmp_path: Path, interval: dict[str, Any] | None, floor: float = 0.005) -> Any:
    source = {"kind": "published", "repository": "o/r", "commit": "c" * 40, "file": "t.csv"}
    source.update(row="r50", column="few shot shenzhencxr")
    if interval is not None:
        source["interval"] = interval
    entry = {
        "profile": "paper",
        "protocol_version": 1,
        "dataset_version": 1,
        "preset": "x v1",
        "metric": "accuracy",
        "value": 0.7086,
        "tolerance": floor,
        "source": source,
    }
    body = {"schema_version": 2, "suite": "s", "device": "cpu", "cases": {CASE: entry}}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(body))
    return ex.load_expected(path, "s")


# --------------------------------------------------------------------------- the parts


def test_rule_names_its_version_and_false_failure_rate() -> None:
    assert PUBLISHED_RULE.name == "published-v1"
    assert PUBLISHED_RULE.false_failure_rate == pytest.approx(0.0026998, abs=1e-6)
    assert "published-v1" in PUBLISHED_RULE.describe() and "0.27%" in PUBLISHED_RULE.describe()
    # the old rule (published 95% interval as the whole tolerance, equal errors)
    assert two_sided_rate(1.96 / math.sqrt(2)) == pytest.approx(0.166, abs=5e-4)


def test_published_standard_errors() -> None:
    assert published_se({"kind": "ci95", "value": 0.0196})[0] == pytest.approx(0.01)
    assert published_se({"kind": "std", "value": 0.02, "runs": 4})[0] == pytest.approx(0.01)
    median = published_se({"kind": "std", "value": 0.02, "runs": 4, "statistic": "median"})
    assert median[0] == pytest.approx(0.01 * math.sqrt(math.pi / 2))
    assert published_se({"kind": "std", "value": 0.02})[0] == pytest.approx(0.02)
    assert published_se(None) == (0.0, "none published")
    for bad in ({"kind": "iqr", "value": 1}, {"kind": "ci95", "value": -1}, {"kind": "std",
                "value": 0.1, "runs": 0}):  # fmt: skip
        with pytest.raises(PublishedIntervalError):
            published_se(bad)


def test_reproduction_standard_error_prefers_the_records_own_interval() -> None:
    record = _record(0.7, accuracy_ci95=0.0196)
    assert reproduction_se(record, "accuracy", 0.7, None)[0] == pytest.approx(0.01)
    std = {"kind": "std", "value": 0.03, "runs": 5}
    assert reproduction_se(_record(0.7), "accuracy", 0.7, std)[0] == pytest.approx(0.03)


def test_reproduction_stand_ins_without_an_interval() -> None:
    # binomial on the test split: the recorded resolution (1/N) first, else dataset.n.test
    record = _record(0.75)
    assert reproduction_se(record, "accuracy", 0.75, None)[0] == pytest.approx(
        math.sqrt(0.75 * 0.25 / 100)
    )
    record["details"]["metric_notes"] = {"resolution": {"accuracy": 1 / 400}}
    assert reproduction_se(record, "accuracy", 0.75, None)[0] == pytest.approx(
        math.sqrt(0.75 * 0.25 / 400)
    )
    cosine = _record(0.2, n_pairs=400.0)
    cosine["details"]["cosine_std"] = 0.1
    assert reproduction_se(cosine, "mean_cosine", 0.2, None)[0] == pytest.approx(0.005)
    assert reproduction_se(_record(0.9), "roc_auc", 0.9, None) == (0.0, "none available")


def test_combine_is_z_times_the_root_sum_of_squares_rounded_up_with_a_floor() -> None:
    assert PUBLISHED_RULE.combine(0.003, 0.004, 0.005) == pytest.approx(0.015)
    assert PUBLISHED_RULE.combine(0.00301, 0.004, 0.005) == pytest.approx(0.0151)
    assert PUBLISHED_RULE.combine(0.0, 0.001, 0.005) == 0.005


# --------------------------------------------------------------------------- the check


def test_check_uses_both_intervals_for_a_published_entry(tmp_path: Path) -> None:
    file = _file(tmp_path, {"kind": "ci95", "value": 0.0072})
    # se = 0.0072/1.96 each: tolerance = 3 * sqrt(2) * 0.003673 = 0.01559 -> 0.0156
    inside = check.check_record(_record(0.7086 + 0.0150, accuracy_ci95=0.0072), file)
    assert inside.status == "pass"
    assert "tolerance 0.0156" in inside.message and "published-v1" in inside.message
    outside = check.check_record(_record(0.7086 + 0.0160, accuracy_ci95=0.0072), file)
    assert outside.status == "fail"
    # the old rule (the published interval alone) would have failed a 0.0080 deviation
    assert check.check_record(_record(0.7086 + 0.0080, accuracy_ci95=0.0072), file).ok


def test_the_stored_tolerance_is_a_floor(tmp_path: Path) -> None:
    file = _file(tmp_path, None, floor=0.03)
    record = _record(0.7086 + 0.029)  # binomial stand-in alone: 3 * 0.0454 = 0.136
    record["dataset"]["n"]["test"] = 100_000  # now 3 * 0.00144 = 0.0043, under the floor
    outcome = check.check_record(record, file)
    assert outcome.ok and "tolerance 0.0300" in outcome.message
    assert not check.check_record(_record(0.7086 + 0.031) | {"dataset": record["dataset"]}, file).ok


def test_a_malformed_published_interval_is_an_error(tmp_path: Path) -> None:
    file = _file(tmp_path, {"kind": "range", "value": 0.01})
    outcome = check.check_record(_record(0.71), file)
    assert outcome.status == "error" and "interval kind" in outcome.message


# --------------------------------------------------------------------------- false failures


def _fewshot_means(
    rng: np.random.Generator, draws: int, p: float, episodes: int, queries: int
) -> tuple[np.ndarray, np.ndarray]:
    """Means and 95% half-widths of ``draws`` few-shot runs of ``episodes`` episodes each."""
    means, halves = [], []
    for start in range(0, draws, 5000):
        n = min(5000, draws - start)
        acc = rng.binomial(queries, p, size=(n, episodes)) / queries
        means.append(acc.mean(axis=1))
        halves.append(1.96 * acc.std(axis=1) / math.sqrt(episodes))
    return np.concatenate(means), np.concatenate(halves)


def test_a_faithful_reproduction_fails_at_the_documented_rate() -> None:
    """Published and reproduced few-shot means drawn from one distribution (SM's 2-way setting:
    600 episodes of 30 queries): published-v1 fails ~0.27% of them, the old rule ~16.6%.
    Deterministic given the seed; the bands are 4 binomial standard errors over 20,000 draws."""
    rng = np.random.default_rng(20240611)
    draws = 20_000
    pub, pub_ci = _fewshot_means(rng, draws, 0.7, 600, 30)
    rep, rep_ci = _fewshot_means(rng, draws, 0.7, 600, 30)
    pub, pub_ci = np.round(pub, 4), np.round(pub_ci, 4)  # published to 4 decimals
    failures = 0
    for value, ci, got, own in zip(pub, pub_ci, rep, rep_ci, strict=True):
        record = {"metrics": {"accuracy": got, "accuracy_ci95": own}}
        tolerance, _ = PUBLISHED_RULE.tolerance(
            record, "accuracy", float(value), {"kind": "ci95", "value": float(ci)}
        )
        failures += abs(got - value) > tolerance + 1e-12
    rate = failures / draws
    band = 4 * math.sqrt(PUBLISHED_RULE.false_failure_rate * (1 - 0.0027) / draws)
    assert abs(rate - PUBLISHED_RULE.false_failure_rate) <= band, rate
    old_rate = float(np.mean(np.abs(rep - pub) > pub_ci))
    expected_old = two_sided_rate(1.96 / math.sqrt(2))
    assert abs(old_rate - expected_old) <= 4 * math.sqrt(expected_old * (1 - expected_old) / draws)


def test_a_published_value_checks_a_gpu_run_without_a_cross_device_spread(tmp_path: Path) -> None:
    """Published numbers came from the peer's hardware: every device class checks them alike."""
    cpu_file = _file(tmp_path, {"kind": "ci95", "value": 0.0072})
    empty = ex.load_expected(_empty(tmp_path / "s.cuda.yaml"), "s")
    near = check.check_record(
        _record(0.7086 + 0.0150, "cuda", accuracy_ci95=0.0072), empty, cpu_file
    )
    assert near.status == "pass" and "checked on cuda as on any device class" in near.message
    far = check.check_record(
        _record(0.7086 + 0.0160, "cuda", accuracy_ci95=0.0072), empty, cpu_file
    )
    assert far.status == "fail"
    # a calibrated (not published) CPU value still refuses a GPU run without a spread
    calibrated = yaml.safe_load((tmp_path / "s.yaml").read_text())
    calibrated["cases"][CASE]["source"] = {
        "kind": "regenerated",
        "date": "2026-11-22",
        "hardware": "cpu",
        "versions": {},
        "commit": "c",
    }
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(calibrated))
    outcome = check.check_record(
        _record(0.7086, "cuda"), empty, ex.load_expected(tmp_path / "s.yaml", "s")
    )
    assert outcome.status == "device"


def _empty(path: Path) -> Path:
    path.write_text(
        yaml.safe_dump({"schema_version": 2, "suite": "s", "device": "cuda", "cases": {}})
    )
    return path
