"""One pytest session's medxfer state: suite, cases, baselines, results folder, threads.

The plugin (:mod:`harness.plugin`) keeps one :class:`MedxferSession` in
``config.stash``; everything here loads on first use, so importing this module imports
neither torch nor the protocols.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import pytest

if TYPE_CHECKING:
    from harness.baselines.check import Baselines
    from harness.baselines.expected import ExpectedFile, ExpectedFileError
    from harness.config.suites import Case, Suite, UnusableCase
    from harness.records.results import ResultRecord

THREADS_ENV = "MEDXFER_TORCH_THREADS"
CASE_MARKER = ("medxfer_case", "a (model, dataset, protocol) benchmark case")


def with_presets(cases: list[Case | UnusableCase], options: list[str]) -> list[Case | UnusableCase]:
    """Apply ``--medxfer-preset PROTOCOL=PRESET`` options to the suite's cases.

    Raises:
        ProtocolError: On a malformed option, or a protocol or preset that does not exist.
    """
    import dataclasses

    from harness.protocols.registry import ProtocolError, get_preset, protocol_names

    chosen: dict[str, str] = {}
    for option in options:
        protocol, sep, name = option.partition("=")
        if not sep or not protocol or not name:
            raise ProtocolError(f"--medxfer-preset {option!r}: expected PROTOCOL=PRESET")
        if protocol not in protocol_names():
            raise ProtocolError(
                f"--medxfer-preset {option!r}: unknown protocol {protocol!r}; known: "
                f"{', '.join(protocol_names())}"
            )
        get_preset(protocol, name)
        chosen[protocol] = name
    return [
        dataclasses.replace(case, preset=chosen[case.protocol]) if case.protocol in chosen else case
        for case in cases
    ]


class MedxferSession:
    """Everything one pytest session knows about medxfer, loaded on first use."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self._suite: Suite | None = None
        self._cases: list[Case | UnusableCase] | None = None
        # what xdist workers built (the controller does not load the suite itself)
        self.worker_case_ids: tuple[str, ...] = ()
        self.worker_suite_names: tuple[str, ...] = ()
        self._usage_error: str | None = None
        self._baselines: dict[str, Baselines] = {}
        self._markers_registered = False
        self.threads_shared = False
        self.merged: list[str] = []

    def option(self, name: str) -> Any:
        """The value of ``--medxfer-<name>``."""
        return self.config.getoption(f"medxfer_{name.replace('-', '_')}")

    @property
    def regenerating(self) -> bool:
        """Whether failing (or all) cases rewrite their expected values."""
        return bool(self.option("regen") or self.option("regen-all"))

    @property
    def suite(self) -> Suite:
        """The selected suite."""
        if self._suite is None:
            from harness.config.suites import SuiteError, load_suite

            name = self.config.getoption("suite") or self.config.getini("medxfer_suite")
            try:
                self._suite = load_suite(name)
            except SuiteError as exc:
                self._usage_error = str(exc)
                raise pytest.UsageError(str(exc)) from exc
        return self._suite

    def cases(self) -> list[Case | UnusableCase]:
        """The suite's cases under the selected profile.

        A case whose model or dataset card is malformed or unknown is an
        :class:`~harness.config.suites.UnusableCase`: it fails alone when run.

        Raises:
            pytest.UsageError: When the suite itself cannot be read (named once: the
                error is kept and raised again on every call).
        """
        if self._usage_error is not None:
            raise pytest.UsageError(self._usage_error)
        if self._cases is None:
            from harness.config.suites import SuiteError
            from harness.protocols.registry import ProtocolError

            unusable: list[UnusableCase] = []
            try:
                cases = self.suite.cases(self.option("profile"), unusable)
                self._cases = with_presets([*cases, *unusable], self.option("preset"))
            except (SuiteError, ProtocolError, KeyError) as exc:
                self._usage_error = str(exc.args[0] if isinstance(exc, KeyError) else exc)
                raise pytest.UsageError(self._usage_error) from exc
        return self._cases

    def built_case_ids(self) -> tuple[str, ...] | None:
        """The case ids, when this process has built the cases (None: it has not)."""
        return None if self._cases is None else tuple(case.case_id for case in self._cases)

    @property
    def usage_error(self) -> str | None:
        """Why the selected suite could not be expanded into cases (None: it could, or it
        was not asked for)."""
        return self._usage_error

    def fail_unusable(self, node: pytest.Item, case: UnusableCase) -> NoReturn:
        """Fail a case whose card cannot be used, with the card's error on one line."""
        node.user_properties.append(("medxfer_card_error", case.error))
        pytest.fail(f"unusable card: {case.error}", pytrace=False)

    def register_markers(self) -> None:
        """Declare one marker per registered protocol (imports the protocols)."""
        if self._markers_registered:
            return
        from harness.protocols.registry import discover

        for name, spec in sorted(discover().items()):
            self.config.addinivalue_line("markers", f"{name}: {spec.marker}")
        self.config.addinivalue_line("markers", f"{CASE_MARKER[0]}: {CASE_MARKER[1]}")
        self._markers_registered = True

    @property
    def device_class(self) -> str:
        """``cpu`` or ``cuda``: the class of the device the cases run on."""
        from harness.features import device_class

        return device_class(self.option("device"))

    def suite_names(self) -> tuple[str, ...]:
        """The selected suite and every suite it includes: one set of expected values each."""
        return self.suite.suite_names()

    def baselines(self, suite: str | None = None) -> Baselines:
        """A suite's expected values (``--medxfer-expected`` replaces the suites' files).

        Args:
            suite: the suite a case comes from; by default the selected suite's first part.
        """
        name = suite or self.suite_names()[0]
        if name not in self._baselines:
            from harness.baselines.check import Baselines

            option = self.option("expected")
            self._baselines[name] = Baselines(name, Path(option) if option else None)
        return self._baselines[name]

    def expected_path(self, suite: str | None = None) -> Path:
        """The expected-value file a suite's cases on this session's device class are checked against."""
        return self.baselines(suite).path_for(self.device_class)

    def expected(self, suite: str | None = None) -> ExpectedFile | ExpectedFileError:
        """A suite's expected values on this session's device class, or why they are unreadable."""
        from harness.baselines.expected import ExpectedFileError

        try:
            return self.baselines(suite).for_device(self.device_class)
        except ExpectedFileError as exc:
            return exc

    @property
    def results_dir(self) -> Path:
        """Where result records go."""
        from harness.config.paths import results_dir

        option = self.option("results")
        return Path(option) if option else results_dir()

    def share_cores(self) -> None:
        """Give this process its share of the cores (or ``$MEDXFER_TORCH_THREADS``), once.

        N xdist workers each with an all-core torch pool oversubscribe the CPU and run
        slower than a single process.
        """
        if self.threads_shared:
            return
        import torch

        threads = os.environ.get(THREADS_ENV)
        workerinput = getattr(self.config, "workerinput", None)
        if threads:
            torch.set_num_threads(int(threads))
        elif workerinput is not None:
            workers = int(workerinput.get("workercount", 1))
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))
        if workerinput is not None and torch.cuda.is_available() and torch.cuda.device_count() > 1:
            # one GPU per xdist worker (gw0 -> cuda:0, gw1 -> cuda:1, ...), round robin
            worker = int(str(workerinput.get("workerid", "gw0")).removeprefix("gw") or 0)
            torch.cuda.set_device(worker % torch.cuda.device_count())
        self.threads_shared = True

    def track(self, record_path: Path) -> None:
        """Log a written record to MLflow (``--medxfer-mlflow``); a failure warns, never fails."""
        import warnings

        from harness.tracking.mlflow import TrackingError, log_record

        uri = self.option("mlflow") or None
        try:
            log_record(record_path, results_dir=self.results_dir, tracking_uri=uri)
        except TrackingError as exc:
            warnings.warn(f"medxfer: --medxfer-mlflow: {exc}", stacklevel=1)

    def leaderboard_lines(self, record_files: list[str]) -> list[str]:
        """A compact leaderboard of the records of the cases just run (empty without any)."""
        from harness.records.results import RecordError, load_record
        from harness.report.terminal import summary_lines

        records = []
        for path in dict.fromkeys(record_files):
            try:
                records.append(load_record(Path(path)))
            except (OSError, RecordError):
                continue  # a record that cannot be read was reported when it was written
        return summary_lines(records) if records else []

    def check(self, node: pytest.Item, record: ResultRecord, required: bool = True) -> None:
        """Check a stored record against its suite's expected values; fail the test on a mismatch.

        Args:
            node: the test.
            record: the case's record.
            required: whether a case without an expected value fails (its suite's
                ``expected_values``); when not, it passes and the obtained entry is written.
        """
        from harness.baselines.obtained import entry_from_record, write_obtained

        payload = record.to_dict()
        outcome = self.baselines(record.suite).check(payload)
        node.user_properties.append(("medxfer_check", outcome.status))
        if outcome.status == "error":
            pytest.fail(outcome.message, pytrace=False)
        if outcome.ok and not self.option("regen-all"):
            return
        expected = self.expected(record.suite)
        assert not isinstance(expected, Exception)  # the check above loaded it
        obtained = write_obtained(expected.path, entry_from_record(payload, outcome.expectation))
        if self.regenerating:
            node.user_properties.append(("medxfer_regenerated", record.case_id))
            return
        if outcome.status == "missing" and not required:
            node.user_properties.append(("medxfer_unchecked", record.case_id))
            return
        hint = (
            f"\n  obtained entry written to {obtained}"
            f"\n  accept it with: pytest benchmarks --suite {expected.suite} --medxfer-regen"
        )
        pytest.fail(outcome.message + hint, pytrace=False)
