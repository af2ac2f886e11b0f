"""``medxfer submit``: a suite run as N sharded pytest sessions on a cluster, through submitit.

Each shard is one submitit job that runs, in a subprocess::

    python -m pytest TESTS -p harness.plugin_shard --suite SUITE --medxfer-shard i/N \\
        --medxfer-results RESULTS [extra pytest args]

with the submitting process's ``MEDXFER_HOME`` (the feature cache, shared by every
shard: it must be on a filesystem every node mounts, see docs/cluster.md), one results
folder for every shard, the user's card folders (``MEDXFER_CARDS``) and one run id
(``MEDXFER_RUN_ID``) shared by the shards, so their records read as one run. The
executor is SLURM (:class:`submitit.AutoExecutor`, one job array) or submitit's local
executor (one process per shard on this machine).

When the jobs are waited for, each shard's pytest outcome is printed, and the records
written under the run id are gathered from the results folder and counted against what
the shards said they wrote; ``medxfer report --results RESULTS`` reads them.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from harness.config.paths import CARDS_ENV
from harness.records.runid import RUN_ID_ENV, new_run_id

Executor = Literal["slurm", "local"]
#: pytest options the submit command sets itself (or that cannot run sharded).
RESERVED_OPTIONS = {
    "--suite": "give the suite as medxfer submit's first argument",
    "--medxfer-shard": "medxfer submit sets it per job",
    "--medxfer-results": "use medxfer submit --results",
    "--medxfer-regen": "regenerate expected values from one session, not from shards "
    "(each shard would clear and merge the same obtained entries)",
    "--medxfer-regen-all": "regenerate expected values from one session, not from shards",
}
#: pytest's exit code when a session selected no test (a shard with no case).
NO_TESTS_COLLECTED = 5
_WRITTEN = re.compile(r"(\d+) result records written")
_SUMMARY = re.compile(r"^=*\s*(\d+ \w+.* in [\d.]+s.*?)\s*=*$")
_INHERITED = ("PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT", "PYTEST_CURRENT_TEST")


@dataclass(frozen=True)
class ShardJob:
    """What one shard runs (pickled into its submitit job).

    Attributes:
        index: The shard, 1-based.
        count: The number of shards.
        command: The pytest command line.
        cwd: The folder it runs in.
        env: Variables set on top of the job's environment.
    """

    index: int
    count: int
    command: tuple[str, ...]
    cwd: str
    env: dict[str, str]


@dataclass
class ShardResult:
    """How one shard's pytest session ended.

    Attributes:
        index: The shard, 1-based.
        count: The number of shards.
        returncode: pytest's exit code (0: every case passed; 5: the shard had no case).
        summary: pytest's last summary line (``3 passed, 1 skipped in 20.1s``).
        records_written: Records the session said it wrote (None: not said).
        host: Where it ran.
        seconds: How long it ran.
        tail: The last lines of its output.
    """

    index: int
    count: int
    returncode: int
    summary: str = ""
    records_written: int | None = None
    host: str = ""
    seconds: float = 0.0
    tail: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether the shard's session passed (or had nothing to run)."""
        return self.returncode in (0, NO_TESTS_COLLECTED)


def check_extra_args(args: Sequence[str]) -> None:
    """Refuse pytest arguments that ``medxfer submit`` sets itself or cannot shard.

    Raises:
        ValueError: Naming the argument and what to do instead.
    """
    for arg in args:
        name = arg.split("=", 1)[0]
        if name in RESERVED_OPTIONS:
            raise ValueError(f"pytest argument {arg!r} after --: {RESERVED_OPTIONS[name]}")


def shard_command(
    suite: str, index: int, count: int, tests: Path, results: Path, extra: Sequence[str] = ()
) -> tuple[str, ...]:
    """The pytest command line of one shard.

    Args:
        suite: The suite's name or path.
        index: The shard, 1-based.
        count: The number of shards.
        tests: The benchmark folder (or files) to collect.
        results: The results folder every shard writes to.
        extra: More pytest arguments (e.g. ``--medxfer-shard-by case``, ``-n 4``).
    """
    return (
        sys.executable,
        "-m",
        "pytest",
        str(tests),
        "-p",
        "harness.plugin_shard",  # a no-op where the medxfer plugin already loads it
        "--suite",
        suite,
        "--medxfer-shard",
        f"{index}/{count}",
        "--medxfer-results",
        str(results),
        *extra,
    )


def shard_jobs(
    suite: str,
    count: int,
    results: Path,
    run_id: str,
    tests: Path | None = None,
    extra: Sequence[str] = (),
) -> list[ShardJob]:
    """The jobs of one sharded run, sharing this process's cache home and card folders.

    Args:
        suite: The suite's name or path (a path is made absolute).
        count: The number of shards (>= 1).
        results: The results folder of every shard.
        run_id: The run id every shard's records carry.
        tests: The benchmark folder (default: the checkout's ``benchmarks``).
        extra: More pytest arguments for every shard.

    Raises:
        ValueError: On a shard count below 1 or a reserved pytest argument.
    """
    from harness.config.paths import PROJECT_ROOT, home

    if count < 1:
        raise ValueError(f"--shards {count}: expected at least 1 shard")
    check_extra_args(extra)
    if Path(suite).suffix in (".yaml", ".yml") or os.sep in suite:
        suite = str(Path(suite).resolve())
    tests = (tests or PROJECT_ROOT / "benchmarks").resolve()
    results = results.resolve()
    env = {"MEDXFER_HOME": str(home().resolve()), "MEDXFER_RESULTS": str(results)}
    env[RUN_ID_ENV] = run_id
    env["PYTHONUNBUFFERED"] = "1"
    if os.environ.get(CARDS_ENV):
        env[CARDS_ENV] = os.environ[CARDS_ENV]
    cwd = str(Path.cwd().resolve())
    return [
        ShardJob(i, count, shard_command(suite, i, count, tests, results, extra), cwd, env)
        for i in range(1, count + 1)
    ]


def run_shard(job: ShardJob) -> ShardResult:
    """Run one shard's pytest session (the function each submitit job calls).

    Its output goes to the job's log as it comes; the result keeps the last lines.
    """
    import socket

    env = {k: v for k, v in os.environ.items() if k not in _INHERITED}
    env.update(job.env)
    print(f"medxfer shard {job.index}/{job.count}: {' '.join(job.command)}", flush=True)
    tail: deque[str] = deque(maxlen=40)
    started = time.monotonic()
    with subprocess.Popen(
        job.command,
        cwd=job.cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
    ) as process:
        assert process.stdout is not None
        for line in process.stdout:
            sys.stdout.write(line)
            tail.append(line.rstrip("\n"))
        returncode = process.wait()
    sys.stdout.flush()
    return ShardResult(
        index=job.index,
        count=job.count,
        returncode=returncode,
        summary=_summary(tail),
        records_written=_written(tail),
        host=socket.gethostname(),
        seconds=time.monotonic() - started,
        tail=list(tail),
    )


def _summary(lines: Sequence[str]) -> str:
    for line in reversed(lines):
        match = _SUMMARY.match(line.strip())
        if match:
            return match.group(1)
    return ""


def _written(lines: Sequence[str]) -> int | None:
    for line in reversed(lines):
        match = _WRITTEN.search(line)
        if match:
            return int(match.group(1))
    return None


def make_executor(kind: Executor, folder: Path, **options: Any) -> Any:
    """A submitit executor.

    Args:
        kind: ``slurm`` (a SLURM job array through :class:`submitit.AutoExecutor`) or
            ``local`` (:class:`submitit.LocalExecutor`: one process per shard here).
        folder: submitit's folder (pickles and logs); on SLURM, on a shared filesystem.
        options: ``timeout_min``, ``gpus_per_node``, ``cpus_per_task``, ``mem_gb``,
            ``slurm_partition``, ``slurm_array_parallelism``, ``slurm_additional_parameters``,
            ``name``; None values are left out, SLURM-only ones ignored locally.

    Raises:
        RuntimeError: When submitit is not installed.
    """
    try:
        import submitit
    except ImportError as exc:
        raise RuntimeError(
            "medxfer submit needs submitit: pip install 'medxfer[cluster]' (or submitit)"
        ) from exc
    given = {key: value for key, value in options.items() if value not in (None, {}, "")}
    if kind == "local":
        executor = submitit.LocalExecutor(folder=folder)
        local = {k: v for k, v in given.items() if k in ("timeout_min", "gpus_per_node")}
        executor.update_parameters(**local)
        return executor
    if kind != "slurm":
        raise ValueError(f"unknown executor {kind!r}: slurm or local")
    try:
        executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
    except RuntimeError as exc:  # no srun here
        raise RuntimeError(
            f"--executor slurm: {exc} Submit from a SLURM login node, or use --executor local"
        ) from exc
    executor.update_parameters(**given)
    return executor


def parse_slurm_params(items: Sequence[str]) -> dict[str, str]:
    """``KEY=VALUE`` texts (``--slurm-param``) as sbatch parameters.

    Raises:
        ValueError: On a text without ``=`` or with an empty key.
    """
    params = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--slurm-param {item!r}: expected KEY=VALUE, e.g. account=proj")
        params[key.strip().replace("-", "_")] = value
    return params


@dataclass
class Submission:
    """A submitted sharded run.

    Attributes:
        run_id: The run id every shard's records carry.
        results: The results folder.
        jobs: The submitit jobs, shard 1 first.
        folder: submitit's folder (logs).
    """

    run_id: str
    results: Path
    jobs: list[Any]
    folder: Path

    def job_ids(self) -> list[str]:
        """The scheduler's ids of the jobs."""
        return [str(job.job_id) for job in self.jobs]

    def wait(self) -> list[ShardResult]:
        """Wait for every shard; a job that died (not a failing pytest) gets return code -1."""
        outcomes = []
        for index, job in enumerate(self.jobs, start=1):
            try:
                outcomes.append(job.result())
            except Exception as exc:  # submitit's FailedJobError / UncompletedJobError
                message = str(exc).strip().splitlines()
                outcomes.append(
                    ShardResult(index, len(self.jobs), -1, f"job failed: {message[-1:]}")
                )
        return outcomes

    def records(self) -> list[Path]:
        """The record files written under this run id, sorted."""
        return gathered_records(self.results, self.run_id)


def gathered_records(results: Path, run_id: str) -> list[Path]:
    """The record files in ``results`` that carry ``run_id`` (their names end with it)."""
    marker = f"-{run_id}"
    return sorted(
        path
        for path in Path(results).glob("*/*/*.json")
        if path.stem.endswith(marker) or f"{marker}-" in path.stem
    )


def submit_suite(
    suite: str,
    shards: int,
    results: Path,
    executor: Executor = "slurm",
    folder: Path | None = None,
    tests: Path | None = None,
    extra: Sequence[str] = (),
    **options: Any,
) -> Submission:
    """Submit one job per shard.

    Args:
        suite: The suite's name or path.
        shards: How many shards (jobs).
        results: The results folder every shard writes to.
        executor: ``slurm`` or ``local``.
        folder: submitit's folder (default ``$MEDXFER_HOME/submitit/<run id>``).
        tests: The benchmark folder (default: the checkout's ``benchmarks``).
        extra: More pytest arguments for every shard.
        options: Executor parameters (:func:`make_executor`).

    Returns:
        The submission (jobs started, not waited for).
    """
    from harness.config.paths import home

    run_id = new_run_id()
    jobs = shard_jobs(suite, shards, results, run_id, tests, extra)
    folder = (folder or home() / "submitit" / run_id).resolve()
    options.setdefault("name", f"medxfer-{Path(suite).stem}")
    runner = make_executor(executor, folder, **options)
    submitted = runner.map_array(run_shard, jobs)
    return Submission(run_id, results.resolve(), list(submitted), folder)


def summarise(submission: Submission, outcomes: Sequence[ShardResult]) -> tuple[list[str], bool]:
    """Lines telling each shard's outcome and the records gathered, and whether all is well.

    All is well when every shard passed (or had no case) and the results folder holds as
    many records of the run as the shards said they wrote.
    """
    lines = []
    ok = True
    for outcome in outcomes:
        state = "passed" if outcome.returncode == 0 else f"FAILED (exit {outcome.returncode})"
        if outcome.returncode == NO_TESTS_COLLECTED:
            state = "no case in this shard"
        ok = ok and outcome.ok
        where = f" on {outcome.host}" if outcome.host else ""
        lines.append(
            f"shard {outcome.index}/{outcome.count}{where}: {state}"
            + (f"; {outcome.summary}" if outcome.summary else "")
        )
    found = submission.records()
    # a session that wrote nothing prints no count; one that died (-1) cannot be counted
    said = sum(o.records_written or 0 for o in outcomes)
    lines.append(
        f"{len(found)} result records of run {submission.run_id} gathered in {submission.results}"
    )
    if all(o.returncode >= 0 for o in outcomes) and said != len(found):
        ok = False
        lines.append(f"records MISSING: the shards said they wrote {said}, {len(found)} found")
    lines.append(f"report: medxfer report --results {submission.results}")
    return lines, ok
