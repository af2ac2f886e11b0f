"""The medxfer pytest plugin: suites become parametrized cases, one test per triple.

Registered through the ``pytest11`` entry point (``medxfer = harness.plugin``).
A benchmark module declares ``PROTOCOL = "<name>"`` and a test that takes the
``bench`` fixture; the plugin parametrizes it with every case of the selected
suite for that protocol, marks it with the protocol's marker and an xdist group
per (model, dataset), and writes one result record per case.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.case import CaseRun, session_run_id
from harness.suites import PROTOCOL_NAMES, Case, SuiteError, load_suite

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
    parser.addini("medxfer_suite", "default suite for benchmark cases", default="demo")


def pytest_configure(config: pytest.Config) -> None:
    """Declare markers and group cases by (model, dataset) under xdist unless --dist was given."""
    for name, text in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {text}")
    session_run_id()  # set before xdist workers start, so they inherit it
    explicit = any(arg.startswith("--dist") for arg in config.invocation_params.args)
    if getattr(config.option, "dist", "no") == "load" and not explicit:
        config.option.dist = "loadgroup"


def _selected_cases(config: pytest.Config) -> list[Case]:
    cached = getattr(config, "_medxfer_cases", None)
    if cached is None:
        name = config.getoption("suite") or config.getini("medxfer_suite")
        try:
            suite = load_suite(name)
            cached = suite.cases(config.getoption("profile"))
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
    run = CaseRun(case, _results_dir(request.config), request.config.getoption("medxfer_device"))
    try:
        run.splits()
    except DatasetNotPrepared:
        pytest.skip(f"dataset {case.dataset.name} is not prepared: {how_to_prepare(case.dataset)}")
    yield run
    for split, outcome in run.feature_cache.items():
        request.node.user_properties.append(("medxfer_feature_cache", f"{split}:{outcome}"))
    if run.record_path is not None:
        request.node.user_properties.append(("medxfer_record", str(run.record_path)))


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
    if hits or misses or records:
        terminalreporter.write_sep("-", "medxfer")
        terminalreporter.write_line(
            f"feature cache: {hits} hits, {misses} extractions; {records} result records written "
            f"to {_results_dir(terminalreporter.config)}"
        )
