"""The medxfer pytest plugin: suites become parametrized cases, one test per triple.

Registered through the ``pytest11`` entry point (``medxfer = harness.plugin``), so it
loads in every pytest run of the environment: importing it imports neither torch nor
the protocols. They load only when a session collects a benchmark, i.e. a test made by
:func:`benchmark_test` (or one that takes the ``bench`` fixture in a module setting
``PROTOCOL``). The plugin parametrizes it with every case of the selected suite for that
protocol, marks it with the protocol's marker and an xdist group, runs the protocol
registered under that name (:mod:`harness.protocols.registry`), writes one result record
per case and checks it against the expected values.

Every option is prefixed ``--medxfer-`` except ``--suite``; the state of a session is one
:class:`MedxferSession` in ``config.stash``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from harness.config.paths import CARDS_ENV
from harness.records.runid import session_run_id
from harness.session import CASE_MARKER, MedxferSession

CASE_IDS_OUTPUT = "medxfer_case_ids"
SUITE_NAMES_OUTPUT = "medxfer_suite_names"

# --medxfer-shard I/N: one pytest session per shard of a suite (medxfer submit)
pytest_plugins = ["harness.plugin_shard"]

if TYPE_CHECKING:
    from harness.config.suites import Case
    from harness.protocols.case import CaseRun


def pytest_addoption(parser: pytest.Parser) -> None:
    """Register medxfer's options in one group."""
    group = parser.getgroup("medxfer", "medxfer benchmark harness")
    group.addoption(
        "--suite",
        default=None,
        help="suite name (benchmarks/suites/<name>.yaml, or a card folder's suites/) or path; "
        "default: ini medxfer_suite",
    )
    add = group.addoption
    add("--medxfer-profile", default=None, help="override the suite's profile (smoke, demo, paper)")
    add(
        "--medxfer-results",
        default=None,
        help="folder for result records (default: $MEDXFER_RESULTS or ./results)",
    )
    add(
        "--medxfer-device",
        default="auto",
        help="device for feature extraction: auto (cuda if available), cpu or cuda",
    )
    add(
        "--medxfer-precision",
        default="fp32",
        choices=("fp32", "bf16", "fp16"),
        help="feature-extraction precision: fp32 (default); bf16 / fp16 autocast only where a "
        "check on a probe batch finds the features sound, else fp32 (recorded)",
    )
    add(
        "--medxfer-preset",
        action="append",
        default=[],
        metavar="PROTOCOL=PRESET",
        help="run a protocol as a peer's code does, e.g. linear=ssl-transfer (medxfer: the "
        "default); overrides the suite's presets; repeatable",
    )
    add(
        "--medxfer-seed",
        type=int,
        default=None,
        help="override the protocols' seed (medxfer calibrate runs one session per seed)",
    )
    add(
        "--medxfer-episodes",
        default=None,
        metavar="FILE",
        help="few-shot cases score these episodes instead of drawing them: pool row indices "
        "(episodes, n_way, n_shot + n_query) in a .npy file (or 'episodes' in a .npz), or "
        "'classes' (episodes, n_way) and 'images' (indices within each class's pool images) "
        "in a .npz; select one case with -k",
    )
    add(
        "--medxfer-regen",
        action="store_true",
        help="rewrite the expected values of failing, stale and missing cases with the measured ones",
    )
    add(
        "--medxfer-regen-all",
        action="store_true",
        help="rewrite the expected values of every case run",
    )
    add(
        "--medxfer-record-only",
        action="store_true",
        help="write result records without checking them against expected values",
    )
    add(
        "--medxfer-expected",
        default=None,
        metavar="FILE",
        help="expected-value file (default: benchmarks/expected/<suite>.yaml, .cuda.yaml on GPU)",
    )
    add(
        "--medxfer-retrain",
        action="store_true",
        help="fine-tuning: train again even when a finished run with the same key is stored",
    )
    add(
        "--medxfer-rerun",
        action="store_true",
        help="run every case again even when a finished result with the same key is stored "
        "(by default a finished case reuses its record, still checked against its expected value)",
    )
    add(
        "--medxfer-cards",
        action="append",
        default=[],
        metavar="DIR",
        help=f"extra card folder (models/, datasets/, suites/ inside); repeatable; also ${CARDS_ENV}",
    )
    add(
        "--medxfer-mlflow",
        nargs="?",
        const="",
        default=None,
        metavar="URI",
        help="log each case as an MLflow run (params, metrics, the record as an artifact) to URI, "
        "or without one to sqlite:///<results>/mlflow/mlflow.db (needs the 'mlflow' extra)",
    )
    parser.addini("medxfer_suite", "default suite for benchmark cases", default="default")


SESSION = pytest.StashKey[MedxferSession]()


def medxfer_session(config: pytest.Config) -> MedxferSession:
    """The session object of ``config``."""
    return config.stash[SESSION]


def pytest_configure(config: pytest.Config) -> None:
    """Create the session object; group cases by xdist group unless --dist was given."""
    from harness.huge_pages import request_huge_pages
    from harness.zoo.hub import sync_hub_offline

    sync_hub_offline()  # before anything imports the hub client (timm does)
    request_huge_pages()  # before any case allocates a tensor (c10 reads it once)
    session = MedxferSession(config)
    config.stash[SESSION] = session
    session_run_id()  # set before xdist workers start, so they inherit it
    folders = [str(Path(folder).resolve()) for folder in config.getoption("medxfer_cards")]
    if folders:  # through the environment, so xdist workers and subprocesses see them too
        known = [p for p in os.environ.get(CARDS_ENV, "").split(os.pathsep) if p]
        os.environ[CARDS_ENV] = os.pathsep.join(dict.fromkeys([*folders, *known]))
    explicit = any(arg.startswith("--dist") for arg in config.invocation_params.args)
    if getattr(config.option, "dist", "no") == "load" and not explicit:
        config.option.dist = "loadgroup"
    if getattr(config.option, "markers", False):  # `pytest --markers` lists the protocols
        session.register_markers()
    if not hasattr(config, "workerinput") and session.regenerating:
        from harness.baselines.obtained import clear_obtained

        for suite in session.suite_names():
            clear_obtained(session.expected_path(suite))


def benchmark_test(protocol: str) -> Callable[[CaseRun], None]:
    """The pytest test of a protocol's cases: ``test_linear = benchmark_test("linear")``.

    Args:
        protocol: A registered protocol name.
    """

    def test(bench: CaseRun) -> None:
        from harness.protocols.registry import CaseNotApplicable
        from harness.zoo.errors import WeightsUnavailable

        try:
            bench.run()
        except (CaseNotApplicable, WeightsUnavailable) as exc:
            pytest.skip(str(exc))

    test.__name__ = test.__qualname__ = f"test_{protocol}"
    test.__doc__ = f"Every {protocol} case of the selected suite."
    test.medxfer_protocol = protocol  # type: ignore[attr-defined]
    return test


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrize ``bench`` with the selected suite's cases of the test's protocol."""
    if "bench" not in metafunc.fixturenames:
        return
    from harness.protocols.registry import ProtocolError, get_protocol

    protocol = getattr(metafunc.function, "medxfer_protocol", None) or getattr(
        metafunc.module, "PROTOCOL", None
    )
    session = medxfer_session(metafunc.config)
    session.register_markers()
    try:
        spec = get_protocol(str(protocol))
    except ProtocolError as exc:
        raise pytest.UsageError(
            f"{metafunc.module.__file__}: a benchmark test names a registered protocol "
            f"(benchmark_test(name) or PROTOCOL = name): {exc}"
        ) from exc
    try:
        cases = session.cases()
    except pytest.UsageError:
        # the suite itself is unreadable: said once, after collection, not once per module
        metafunc.parametrize("bench", [], indirect=True)
        return
    params = []
    for case in cases:
        if case.protocol != spec.name:
            continue
        # cases sharing frozen features share a worker; the others spread freely
        group = case.group if spec.needs == "features" else f"{spec.name}:{case.group}"
        marks = [
            getattr(pytest.mark, spec.name),
            getattr(pytest.mark, CASE_MARKER[0]),
            pytest.mark.xdist_group(group),
        ]
        params.append(pytest.param(case, id=case.param_id, marks=marks))
    metafunc.parametrize("bench", params, indirect=True)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Drop the placeholder of a protocol the suite has no case of; costly cases first.

    A benchmark module whose protocol has no case in the suite would otherwise show as a
    skipped ``[NOTSET]`` test. Fine-tuning cases move to the front (a stable sort), so
    xdist starts the longest work first instead of ending on it.
    """
    empty = [item for item in items if _empty_parameter_set(item)]
    if empty:
        config.hook.pytest_deselected(items=empty)
        kept = [item for item in items if not _empty_parameter_set(item)]
    else:
        kept = list(items)
    kept.sort(key=lambda item: item.get_closest_marker("finetune") is None)
    items[:] = kept


def _empty_parameter_set(item: pytest.Item) -> bool:
    if "bench" not in getattr(item, "fixturenames", ()):
        return False
    skip = item.get_closest_marker("skip")
    return skip is not None and "empty parameter set" in str(skip.kwargs.get("reason", ""))


@pytest.fixture
def bench(request: pytest.FixtureRequest) -> Iterator[CaseRun]:
    """The case being run; skips when its model's weights are absent and cannot be fetched
    now, or its dataset is not prepared, saying what to download and where to put it."""
    from harness.config.suites import UnusableCase
    from harness.data.prepare import DatasetNotPrepared, how_to_prepare
    from harness.protocols.case import CaseRun
    from harness.zoo.errors import WeightsUnavailable

    session = medxfer_session(request.config)
    case: Case | UnusableCase = request.param
    if isinstance(case, UnusableCase):
        session.fail_unusable(request.node, case)
    session.share_cores()
    run = CaseRun(case, session.results_dir, session.option("device"), session.option("precision"))
    run.seed = session.option("seed")
    episodes = session.option("episodes")
    run.episodes_file = None if episodes is None else str(Path(episodes).resolve())
    run.retrain = session.option("retrain")
    run.rerun = session.option("rerun")
    if not session.option("record-only"):
        run.on_record = lambda record: session.check(request.node, record, case.expected_required)
    try:
        run.ensure_weights()
    except WeightsUnavailable as exc:
        pytest.skip(str(exc))
    try:
        run.splits()
    except DatasetNotPrepared:
        pytest.skip(f"dataset {case.dataset.name} is not prepared: {how_to_prepare(case.dataset)}")
    yield run
    if run.outcome is not None:
        request.node.user_properties.append(("medxfer_case_result", run.outcome))
    for split, outcome in run.feature_cache.items():
        request.node.user_properties.append(("medxfer_feature_cache", f"{split}:{outcome}"))
    if run.record_path is not None and run.record_written:
        request.node.user_properties.append(("medxfer_record", str(run.record_path)))
        if session.option("mlflow") is not None:
            session.track(run.record_path)
    if run.record_path is not None:
        request.node.user_properties.append(("medxfer_record_file", str(run.record_path)))


def pytest_collection_finish(session: pytest.Session) -> None:
    """Stop with one clear error when the selected suite cannot be read."""
    error = medxfer_session(session.config).usage_error
    if error is not None:
        raise pytest.UsageError(f"medxfer: {error}")


def pytest_sessionfinish(session: pytest.Session) -> None:
    """On a worker: hand the suite's case ids to the controller. On the controller: merge
    regenerated entries into the expected file."""
    state = medxfer_session(session.config)
    if hasattr(session.config, "workerinput"):
        ids = state.built_case_ids()
        if ids is not None:
            output = session.config.workeroutput  # type: ignore[attr-defined]
            output[CASE_IDS_OUTPUT] = list(ids)
            output[SUITE_NAMES_OUTPUT] = list(state.suite_names())
        return
    if not state.regenerating:
        return
    from harness.baselines.expected import ExpectedFile, ExpectedFileError
    from harness.baselines.obtained import merge_obtained

    for suite in state.suite_names():
        expected = state.expected(suite)
        if isinstance(expected, ExpectedFileError):
            expected = ExpectedFile(state.expected_path(suite), suite)
        state.merged += merge_obtained(expected)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: object, error: object) -> None:
    """xdist controller: keep the case ids and suite names a worker built (see
    :func:`pytest_sessionfinish`).

    The controller never collects; loading the suite itself would import torch and every
    protocol (about 7 s on a 2-core machine) only to list stale expected entries.
    """
    output = getattr(node, "workeroutput", {})
    if CASE_IDS_OUTPUT in output:
        state = medxfer_session(node.config)  # type: ignore[attr-defined]
        state.worker_case_ids = tuple(output[CASE_IDS_OUTPUT])
        state.worker_suite_names = tuple(output[SUITE_NAMES_OUTPUT])


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Summarise feature-cache hits/extractions and records written (xdist-safe)."""
    hits = misses = records = unchecked = reused = 0
    card_errors: dict[str, int] = {}
    record_files: list[str] = []
    for reports in terminalreporter.stats.values():
        for report in reports:
            if getattr(report, "when", None) not in ("setup", "teardown"):
                continue
            for key, value in getattr(report, "user_properties", []):
                if report.when == "setup":  # a failed setup has no teardown report
                    if key == "medxfer_card_error":
                        card_errors[value] = card_errors.get(value, 0) + 1
                    continue
                if key == "medxfer_case_result":
                    reused += value == "reused"
                elif key == "medxfer_feature_cache":
                    hits += value.endswith(":hit")
                    misses += value.endswith(":miss")
                elif key == "medxfer_record":
                    records += 1
                elif key == "medxfer_record_file":
                    record_files.append(value)
                elif key == "medxfer_unchecked":
                    unchecked += 1
    if not (hits or misses or records or reused or card_errors):
        return
    from harness.baselines.expected import ExpectedFileError

    state = medxfer_session(terminalreporter.config)
    terminalreporter.write_sep("-", "medxfer")
    for error, count in sorted(card_errors.items()):
        terminalreporter.write_line(f"unusable card ({count} cases failed): {error}", red=True)
    terminalreporter.write_line(
        f"feature cache: {hits} hits, {misses} extractions; {records} result records written "
        f"to {state.results_dir}"
    )
    if reused:
        terminalreporter.write_line(
            f"finished cases: {reused} reused their stored result (run them again with "
            "--medxfer-rerun)"
        )
    for line in state.leaderboard_lines(record_files):
        terminalreporter.write_line(line)
    if unchecked:
        terminalreporter.write_line(
            f"expected values: {unchecked} cases have none yet (their suite makes them "
            "optional); accept the measured ones with --medxfer-regen",
            yellow=True,
        )
    if state.merged:
        terminalreporter.write_line(f"expected values: regenerated {len(state.merged)} entries")
    known = set(state.worker_case_ids or (case.case_id for case in state.cases()))
    for suite in state.worker_suite_names or state.suite_names():
        expected = state.expected(suite)
        if isinstance(expected, ExpectedFileError):
            terminalreporter.write_line(f"expected values: {expected}", red=True)
            continue
        for case_id in sorted(set(expected.entries) - known):
            terminalreporter.write_line(
                f"expected values: entry {case_id} in {expected.path} matches no case of suite "
                f"{expected.suite} (stale: remove it or fix the suite)",
                yellow=True,
            )
