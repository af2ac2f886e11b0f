"""The medxfer pytest plugin: suites become parametrized cases, one test per triple.

Registered through the ``pytest11`` entry point (``medxfer = harness.plugin``).
A benchmark module declares ``PROTOCOL = "<name>"`` and a test that takes the
``bench`` fixture; the plugin parametrizes it with every case of the selected
suite for that protocol, marks it with the protocol's marker and an xdist group
per (model, dataset), and writes one result record per case.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from harness.case import CaseRun, session_run_id
from harness.expected import (
    ExpectedFile,
    ExpectedFileError,
    check_record,
    clear_obtained,
    entry_from_record,
    expected_path,
    load_expected,
    merge_obtained,
    write_obtained,
)
from harness.results import ResultRecord
from harness.suites import PROTOCOL_NAMES, Case, Suite, SuiteError, load_suite

MARKERS = {
    "linear": "linear-probe benchmark cases (frozen features, logistic regression)",
    "fewshot": "prototypical few-shot benchmark cases",
    "knn": "k-nearest-neighbour benchmark cases",
    "invariance": "synthetic-transform feature-invariance benchmark cases",
    "multiview": "multi-view (same patient/study) feature-invariance benchmark cases",
    "finetune": "full fine-tuning benchmark cases",
    "medxfer_case": "a (model, dataset, protocol) benchmark case",
}


def pytest_addoption(parser: pytest.Parser) -> None:
    """Register medxfer's options in one group."""
    group = parser.getgroup("medxfer", "medxfer benchmark harness")
    group.addoption(
        "--suite",
        default=None,
        help="suite name (benchmarks/suites/<name>.yaml) or path; default: ini medxfer_suite",
    )
    group.addoption(
        "--profile",
        default=None,
        choices=("smoke", "demo", "paper"),
        help="override the suite's profile",
    )
    group.addoption(
        "--medxfer-results",
        default=None,
        help="folder for result records (default: $MEDXFER_RESULTS or ./results)",
    )
    group.addoption(
        "--medxfer-device",
        default="auto",
        help="device for feature extraction: auto (cuda if available), cpu or cuda",
    )
    group.addoption(
        "--medxfer-precision",
        default="fp32",
        choices=("fp32", "bf16", "fp16"),
        help="feature-extraction precision: fp32 (default); bf16 / fp16 autocast only where a "
        "check on a probe batch finds the features sound, else fp32 (recorded)",
    )
    group.addoption(
        "--regen-expected",
        action="store_true",
        help="rewrite the expected values of failing, stale and missing cases with the measured ones",
    )
    group.addoption(
        "--regen-all",
        action="store_true",
        help="rewrite the expected values of every case run",
    )
    group.addoption(
        "--record-only",
        action="store_true",
        help="write result records without checking them against expected values",
    )
    group.addoption(
        "--expected-file",
        default=None,
        help="expected-value file (default: benchmarks/expected/<suite>.yaml)",
    )
    group.addoption(
        "--retrain",
        action="store_true",
        help="fine-tuning: train again even when a finished run with the same key is stored",
    )
    group.addoption(
        "--medxfer-seed",
        type=int,
        default=None,
        help="override the protocols' seed (medxfer calibrate runs one session per seed)",
    )
    parser.addini("medxfer_suite", "default suite for benchmark cases", default="demo")


def pytest_configure(config: pytest.Config) -> None:
    """Declare markers and group cases by (model, dataset) under xdist unless --dist was given."""
    for name, text in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {text}")
    session_run_id()  # set before xdist workers start, so they inherit it
    explicit = any(arg.startswith("--dist") for arg in config.invocation_params.args)
    if getattr(config.option, "dist", "no") == "load" and not explicit:
        config.option.dist = "loadgroup"
    _share_cores(config)
    if not hasattr(config, "workerinput") and _regenerating(config):
        clear_obtained(_expected_path(config))


def _share_cores(config: pytest.Config) -> None:
    """Give each xdist worker its share of the cores (or MEDXFER_TORCH_THREADS threads).

    N workers each with an all-core torch pool oversubscribe the CPU and run slower
    than a single process.
    """
    threads = os.environ.get("MEDXFER_TORCH_THREADS")
    workerinput = getattr(config, "workerinput", None)
    if threads:
        torch.set_num_threads(int(threads))
    elif workerinput is not None:
        workers = int(workerinput.get("workercount", 1))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


def _regenerating(config: pytest.Config) -> bool:
    return bool(config.getoption("regen_expected") or config.getoption("regen_all"))


def _suite(config: pytest.Config) -> Suite:
    cached = getattr(config, "_medxfer_suite", None)
    if cached is None:
        name = config.getoption("suite") or config.getini("medxfer_suite")
        try:
            cached = load_suite(name)
        except SuiteError as exc:
            raise pytest.UsageError(str(exc)) from exc
        config._medxfer_suite = cached  # type: ignore[attr-defined]
    return cached


def _device_class(config: pytest.Config) -> str:
    from harness.features import device_class

    return device_class(config.getoption("medxfer_device"))


def _expected_path(config: pytest.Config) -> Path:
    option = config.getoption("expected_file")
    return Path(option) if option else expected_path(_suite(config).name, _device_class(config))


def _fallback(config: pytest.Config) -> ExpectedFile | None:
    """The CPU values when the run is on another device class (used only with a measured spread)."""
    if not hasattr(config, "_medxfer_fallback"):
        fallback = None
        if _device_class(config) != "cpu" and not config.getoption("expected_file"):
            path = expected_path(_suite(config).name, "cpu")
            try:
                fallback = load_expected(path, _suite(config).name) if path.is_file() else None
            except ExpectedFileError:
                fallback = None
        config._medxfer_fallback = fallback  # type: ignore[attr-defined]
    return config._medxfer_fallback  # type: ignore[attr-defined]


def _expected(config: pytest.Config) -> ExpectedFile | ExpectedFileError:
    cached = getattr(config, "_medxfer_expected", None)
    if cached is None:
        try:
            cached = load_expected(_expected_path(config), _suite(config).name)
        except ExpectedFileError as exc:
            cached = exc
        config._medxfer_expected = cached  # type: ignore[attr-defined]
    return cached


def _selected_cases(config: pytest.Config) -> list[Case]:
    cached = getattr(config, "_medxfer_cases", None)
    if cached is None:
        try:
            cached = _suite(config).cases(config.getoption("profile"))
        except (SuiteError, KeyError) as exc:
            raise pytest.UsageError(str(exc)) from exc
        config._medxfer_cases = cached  # type: ignore[attr-defined]
    return cached


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrize ``bench`` with the selected suite's cases of the module's protocol."""
    if "bench" not in metafunc.fixturenames:
        return
    protocol = getattr(metafunc.module, "PROTOCOL", None)
    if protocol not in PROTOCOL_NAMES:
        raise pytest.UsageError(
            f"{metafunc.module.__file__}: a benchmark module must set PROTOCOL to one of "
            f"{', '.join(PROTOCOL_NAMES)}"
        )
    params = [
        pytest.param(
            case,
            id=case.param_id,
            marks=[
                getattr(pytest.mark, protocol),
                pytest.mark.medxfer_case,
                pytest.mark.xdist_group(case.group),
            ],
        )
        for case in _selected_cases(metafunc.config)
        if case.protocol == protocol
    ]
    metafunc.parametrize("bench", params, indirect=True)


def _results_dir(config: pytest.Config) -> Path:
    from harness.paths import results_dir

    option = config.getoption("medxfer_results")
    return Path(option) if option else results_dir()


@pytest.fixture
def bench(request: pytest.FixtureRequest) -> Iterator[CaseRun]:
    """The case being run; skips when its dataset is not prepared, saying how to prepare it."""
    from harness.data.prepare import DatasetNotPrepared, how_to_prepare

    case: Case = request.param
    config = request.config
    run = CaseRun(
        case,
        _results_dir(config),
        config.getoption("medxfer_device"),
        config.getoption("medxfer_precision"),
    )
    run.seed = config.getoption("medxfer_seed")
    run.retrain = config.getoption("retrain")
    if not config.getoption("record_only"):
        run.on_record = lambda record: _check(config, request.node, record)
    try:
        run.splits()
    except DatasetNotPrepared:
        pytest.skip(f"dataset {case.dataset.name} is not prepared: {how_to_prepare(case.dataset)}")
    yield run
    for split, outcome in run.feature_cache.items():
        request.node.user_properties.append(("medxfer_feature_cache", f"{split}:{outcome}"))
    if run.record_path is not None:
        request.node.user_properties.append(("medxfer_record", str(run.record_path)))


def _check(config: pytest.Config, node: pytest.Item, record: ResultRecord) -> None:
    expected = _expected(config)
    if isinstance(expected, ExpectedFileError):
        pytest.fail(f"cannot check {record.case_id}: {expected}", pytrace=False)
    payload = record.to_dict()
    outcome = check_record(payload, expected, _fallback(config))
    node.user_properties.append(("medxfer_check", outcome.status))
    regen_all = config.getoption("regen_all")
    if outcome.ok and not regen_all:
        return
    entry = entry_from_record(payload, outcome.expectation)
    obtained = write_obtained(expected.path, entry)
    if _regenerating(config):
        node.user_properties.append(("medxfer_regenerated", record.case_id))
        return
    hint = (
        f"\n  obtained entry written to {obtained}"
        f"\n  accept it with: pytest benchmarks --suite {expected.suite} --regen-expected"
    )
    pytest.fail(outcome.message + hint, pytrace=False)


def pytest_sessionfinish(session: pytest.Session) -> None:
    """On the controller: merge regenerated entries into the expected file."""
    config = session.config
    if hasattr(config, "workerinput") or not _regenerating(config):
        return
    expected = _expected(config)
    if isinstance(expected, ExpectedFileError):
        expected = ExpectedFile(_expected_path(config), _suite(config).name)
    config._medxfer_merged = merge_obtained(expected)  # type: ignore[attr-defined]


def _unused_entries(config: pytest.Config) -> list[str]:
    expected = _expected(config)
    if isinstance(expected, ExpectedFileError):
        return []
    known = {case.case_id for case in _suite(config).cases()}
    return sorted(set(expected.entries) - known)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Summarise feature-cache hits/extractions and records written (xdist-safe)."""
    hits = misses = records = 0
    for reports in terminalreporter.stats.values():
        for report in reports:
            if getattr(report, "when", None) != "teardown":
                continue
            for key, value in getattr(report, "user_properties", []):
                if key == "medxfer_feature_cache":
                    hits += value.endswith(":hit")
                    misses += value.endswith(":miss")
                elif key == "medxfer_record":
                    records += 1
    config = terminalreporter.config
    if not (hits or misses or records):
        return
    terminalreporter.write_sep("-", "medxfer")
    terminalreporter.write_line(
        f"feature cache: {hits} hits, {misses} extractions; {records} result records written "
        f"to {_results_dir(config)}"
    )
    expected = _expected(config)
    if isinstance(expected, ExpectedFileError):
        terminalreporter.write_line(f"expected values: {expected}", red=True)
        return
    merged = getattr(config, "_medxfer_merged", None)
    if merged:
        terminalreporter.write_line(
            f"expected values: regenerated {len(merged)} entries in {expected.path}"
        )
    for case_id in _unused_entries(config):
        terminalreporter.write_line(
            f"expected values: entry {case_id} in {expected.path} matches no case of suite "
            f"{expected.suite} (stale: remove it or fix the suite)",
            yellow=True,
        )
