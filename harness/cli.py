"""The ``medxfer`` command: list | info | prepare | convert | derive | report | calibrate | compare | cache | submit."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from harness.cache_cli import add_cache_parser
from harness.config.model_cards import CATEGORIES
from harness.config.paths import PROJECT_ROOT
from harness.derive_cli import add_derive_parser


def _cmd_list(args: argparse.Namespace) -> int:
    from harness.config.cards import all_dataset_cards, all_model_cards
    from harness.config.suites import available_suites, load_suite
    from harness.data.prepare import is_prepared

    if args.what in ("models", "all"):
        from harness.zoo.catalog import list_line, select_models

        print("# models")
        cards = select_models(
            all_model_cards().values(), args.category, args.architecture, args.pretraining_data
        )
        for card in cards:
            line = list_line(card)
            if card.weights.derived is not None:  # how the harness made it (imports torch)
                from harness.zoo.derived import provenance_text

                line += f"  [{provenance_text(card)}]"
            print(line)
    if args.what in ("datasets", "all"):
        print("# datasets")
        for card in all_dataset_cards().values():
            state = "prepared" if is_prepared(card) else "not prepared"
            kind = "semi-synthetic" if card.semi_synthetic else "real"
            print(f"{card.name:28s} v{card.version:<3d} {card.task:10s} {kind:15s} {state}")
    if args.what in ("suites", "all"):
        print("# suites")
        for name in available_suites():
            suite = load_suite(name)
            n = len(suite.cases())
            print(f"{name:16s} {n:4d} cases  profile={suite.profile:6s} {suite.description}")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from harness.config.cards import all_model_cards, get_model_card
    from harness.derive_cli import info_rows
    from harness.zoo.catalog import model_info

    card = get_model_card(args.model)
    for label, value in info_rows(card, model_info(card, all_model_cards().values())):
        print(f"{label + ':':23s} {value}")
    return 0


def _cmd_prepare(args: argparse.Namespace) -> int:
    from harness.config.cards import get_dataset_card
    from harness.data.acquire import prepare_dataset

    root = Path(args.root) if args.root else None
    if root is not None and len(args.datasets) > 1:
        print("medxfer prepare: --root names the folder of one dataset", file=sys.stderr)
        return 2
    status = 0
    for name in args.datasets:
        ready, lines = prepare_dataset(get_dataset_card(name), root, args.download)
        out = sys.stdout if ready else sys.stderr
        print(f"{name}: {lines[0]}" if ready else f"{name}: not ready", file=out)
        for line in lines[1:] if ready else lines:
            print(f"  {line}", file=out)
        status = status or (0 if ready else 1)
    return status


def _cmd_convert(args: argparse.Namespace) -> int:
    from harness.config.cards import get_model_card
    from harness.zoo.convert import convert

    card = get_model_card(args.model)
    result = convert(card, Path(args.source), force=args.force)
    print(f"{card.name}: {result.tensors} tensors converted; the card now loads {result.path}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from harness.config.paths import results_dir
    from harness.report.build import write_report_files

    results = Path(args.results) if args.results else results_dir()
    out = Path(args.out) if args.out else PROJECT_ROOT / "reports" / f"{args.suite or 'all'}.md"
    title = args.title or f"medxfer report: {args.suite or 'all suites'}"
    baselines, parts = None, ()
    if args.suite:
        from harness.baselines.check import Baselines
        from harness.config.suites import load_suite

        suite = load_suite(args.suite)
        if suite.include:  # records carry the included suites' names
            parts = suite.suite_names()
        else:
            baselines = Baselines(suite.name)
    filters = {
        "keyword": args.keyword,
        "protocols": [p for value in args.protocol for p in value.split(",") if p],
        "models": args.models,
        "datasets": args.datasets,
    }
    written = write_report_files(
        results,
        out,
        args.suite,
        title,
        baselines,
        parts,
        runs=args.runs,
        filters=filters,
        figures=not args.no_figures,
        html=not args.no_html,
        auto_baselines=not args.suite,
    )
    for path in (written.markdown, written.csv, written.html):
        if path is not None:
            print(f"report written to {path}")
    if written.figures:
        print(f"{len(written.figures)} figure(s) written to {written.figures[0].parent}")
    return 0


def _cmd_calibrate(args: argparse.Namespace) -> int:
    from harness.baselines.calibrate import calibrate, measure_cross_device

    out = Path(args.out) if args.out else None
    if args.cross_device:
        from harness.baselines.expected import expected_path, load_expected
        from harness.config.suites import load_suite

        name = load_suite(args.suite).name
        path = out or expected_path(name)
        block = measure_cross_device(load_expected(path, name), Path(args.cross_device))
        print(f"cross-device spread over {block['cases']} cases: {block['spread']} -> {path}")
        return 0
    work_dir = Path(args.work_dir) if args.work_dir else None
    calibrate(
        args.suite,
        args.seeds,
        args.pytest_args,
        out,
        args.kernel_runs,
        work_dir,
        args.resume,
        args.merge,
    )
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from harness.baselines.compare import FailRule, compare_runs, format_table

    rules = [FailRule.parse(text) for text in args.fail]
    table, broken = compare_runs(
        Path(args.run_a), Path(args.run_b), rules, fail_on_expected=args.fail_on_expected
    )
    print(format_table(table))
    for message in broken:
        print(f"FAIL {message}", file=sys.stderr)
    return 1 if broken else 0


def _cmd_submit(args: argparse.Namespace) -> int:
    from harness.config.paths import results_dir
    from harness.submit import parse_slurm_params, submit_suite, summarise

    extra = [*args.pytest_args]
    if args.shard_by != "group":
        extra += ["--medxfer-shard-by", args.shard_by]
    slurm_extra = parse_slurm_params(args.slurm_param)
    submission = submit_suite(
        args.suite,
        args.shards,
        Path(args.results) if args.results else results_dir(),
        executor=args.executor,
        folder=Path(args.folder) if args.folder else None,
        tests=Path(args.tests) if args.tests else None,
        extra=extra,
        timeout_min=args.timeout_min,
        gpus_per_node=args.gpus_per_node,
        cpus_per_task=args.cpus_per_task,
        mem_gb=args.mem_gb,
        slurm_partition=args.slurm_partition,
        slurm_array_parallelism=args.slurm_array_parallelism,
        slurm_additional_parameters=slurm_extra,
    )
    print(
        f"submitted {args.shards} shard(s) of {args.suite} as job(s) "
        f"{', '.join(submission.job_ids())} (run {submission.run_id}; logs in {submission.folder})"
    )
    if args.no_wait:
        results = submission.results
        print(f"records go to {results}; report: medxfer report --results {results}")
        return 0
    lines, ok = summarise(submission, submission.wait())
    for line in lines:
        print(line, file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the ``medxfer`` command."""
    parser = argparse.ArgumentParser(prog="medxfer", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p_list = sub.add_parser("list", help="list model cards, dataset cards and suites")
    p_list.add_argument(
        "what", nargs="?", default="all", choices=("models", "datasets", "suites", "all")
    )
    p_list.add_argument(
        "--category", default=None, choices=CATEGORIES, help="models of this category only"
    )
    p_list.add_argument(
        "--architecture", default=None, help="models of this architecture (wildcards: resnet*)"
    )
    p_list.add_argument(
        "--pretraining-data", default=None, help="models whose pretraining data mention this text"
    )
    p_list.set_defaults(func=_cmd_list)

    p_info = sub.add_parser(
        "info",
        help="a model card: source, checksum, whether its weights are cached, features, "
        "preprocessing (nothing is downloaded)",
    )
    p_info.add_argument("model", help="model card name, or timm:<name>")
    p_info.set_defaults(func=_cmd_info)

    p_prep = sub.add_parser(
        "prepare",
        help="check a dataset's layout, say what is missing, and decode it (demo datasets "
        "build offline)",
    )
    p_prep.add_argument("datasets", nargs="+")
    p_prep.add_argument(
        "--root",
        default=None,
        help="the dataset's folder as downloaded (read in place: the harness's data folder "
        "for it becomes a link to it)",
    )
    p_prep.add_argument(
        "--download",
        action="store_true",
        help="fetch a dataset released as one archive (MedMNIST: NAME_64 etc. for sizes), "
        "checksum verified",
    )
    p_prep.set_defaults(func=_cmd_prepare)

    p_conv = sub.add_parser(
        "convert",
        help="one-time conversion of weights only a pickle or TensorFlow can read "
        "(cards with weights.format haiku_pickle / tf_checkpoint) into safetensors",
    )
    p_conv.add_argument("model", help="model card name")
    p_conv.add_argument(
        "--from",
        dest="source",
        required=True,
        metavar="FILE",
        help="the downloaded file (a Haiku .pkl you trust; a TensorFlow checkpoint prefix, "
        ".index, folder or .zip)",
    )
    p_conv.add_argument("--force", action="store_true", help="overwrite an earlier conversion")
    p_conv.set_defaults(func=_cmd_convert)

    p_report = sub.add_parser(
        "report",
        help="render result records as a markdown report (+ CSV, figures, HTML)",
        description="Leaderboards, ranks, models x datasets, gains over random init, "
        "tolerance tables and figures from the result records (see docs/reports.md).",
    )
    p_report.add_argument("--suite", default=None, help="only this suite's records")
    p_report.add_argument("--results", default=None, help="records folder (default ./results)")
    p_report.add_argument("--out", default=None, help="output file (default reports/<suite>.md)")
    p_report.add_argument("--title", default=None)
    p_report.add_argument(
        "-k", dest="keyword", default=None, metavar="EXPRESSION",
        help="only cases matching this pytest -k expression (case id, suite, profile, preset)",
    )  # fmt: skip
    p_report.add_argument(
        "--protocol", action="append", default=[],
        help="only this protocol (repeat, or comma-separate, for several)",
    )  # fmt: skip
    p_report.add_argument(
        "--models", default=None, metavar="REGEX", help="only models whose name matches"
    )
    p_report.add_argument(
        "--datasets", default=None, metavar="REGEX", help="only datasets whose name matches"
    )
    p_report.add_argument(
        "--runs", choices=("latest", "best", "mean"), default="latest",
        help="a case run several times: its newest run (default), its best run, or the "
        "mean over its runs with their standard deviation",
    )  # fmt: skip
    p_report.add_argument("--no-figures", action="store_true", help="do not draw PNG figures")
    p_report.add_argument("--no-html", action="store_true", help="do not write the HTML report")
    p_report.set_defaults(func=_cmd_report)

    p_cal = sub.add_parser(
        "calibrate",
        help="run a suite under N seeds and K kernel variants (fresh processes and caches) "
        "and write its expected values; pytest arguments go after --, e.g. -- -n 2",
    )
    p_cal.add_argument("suite")
    p_cal.add_argument("--seeds", type=int, default=3)
    p_cal.add_argument(
        "--kernel-runs",
        type=int,
        default=4,
        help="seed-0 runs with a fresh cache under other CPU kernels (0 to skip; at most 4)",
    )
    p_cal.add_argument(
        "--out",
        default=None,
        help="expected file (default benchmarks/expected/<suite>.yaml, <suite>.cuda.yaml on GPU)",
    )
    p_cal.add_argument(
        "--work-dir",
        default=None,
        help="keep every run's cache and records in this folder (default: a temporary one)",
    )
    p_cal.add_argument(
        "--resume",
        action="store_true",
        help="with --work-dir: reuse the sessions an interrupted calibration finished",
    )
    p_cal.add_argument(
        "--merge",
        action="store_true",
        help="keep the runs of the other machines each entry was calibrated on, so the "
        "tolerance covers them too (source.other_hardware)",
    )
    p_cal.add_argument(
        "--cross-device",
        default=None,
        metavar="RESULTS",
        help="instead of running: measure the spread between the expected file and the "
        "records in RESULTS made on another device class, and store it in the file",
    )
    p_cal.set_defaults(func=_cmd_calibrate)

    p_cmp = sub.add_parser("compare", help="compare two results folders case by case")
    p_cmp.add_argument("run_a", help="baseline results folder")
    p_cmp.add_argument("run_b", help="new results folder")
    p_cmp.add_argument(
        "--fail",
        action="append",
        default=[],
        metavar="METRIC:DELTA",
        help="fail when B is worse than A by more than DELTA (absolute, or N%%); METRIC may be 'primary'",
    )
    p_cmp.add_argument(
        "--fail-on-expected",
        action="store_true",
        help="also fail when a case of B fails its expected-value check (the check pytest runs)",
    )
    p_cmp.set_defaults(func=_cmd_compare)

    p_sub = sub.add_parser(
        "submit",
        help="run a suite as N sharded pytest sessions through submitit (SLURM, or local "
        "processes) sharing the cache and one results folder; pytest arguments go after --",
        description="One job per shard runs pytest --medxfer-shard i/N with this MEDXFER_HOME "
        "(on a shared filesystem: see docs/cluster.md) and one results folder.",
    )
    p_sub.add_argument("suite", help="suite name or path")
    p_sub.add_argument("--shards", type=int, required=True, help="number of jobs")
    p_sub.add_argument("--executor", choices=("slurm", "local"), default="slurm")
    p_sub.add_argument(
        "--folder", default=None, help="submitit logs (default $MEDXFER_HOME/submitit/<run id>)"
    )
    p_sub.add_argument("--results", default=None, help="records folder (default ./results)")
    p_sub.add_argument("--tests", default=None, help="benchmark folder (default benchmarks/)")
    p_sub.add_argument(
        "--shard-by", choices=("group", "case"), default="group",
        help="group: each (model, dataset) feature group in one shard (default); case: "
        "cases placed alone, sharing features through the cache",
    )  # fmt: skip
    p_sub.add_argument("--timeout-min", type=int, default=240, help="per job (default 240)")
    p_sub.add_argument("--gpus-per-node", type=int, default=None)
    p_sub.add_argument("--cpus-per-task", type=int, default=None)
    p_sub.add_argument("--mem-gb", type=float, default=None)
    p_sub.add_argument("--slurm-partition", default=None)
    p_sub.add_argument(
        "--slurm-array-parallelism", type=int, default=None, help="shards running at once"
    )
    p_sub.add_argument(
        "--slurm-param", action="append", default=[], metavar="KEY=VALUE",
        help="extra sbatch parameter, e.g. account=proj or constraint=a100; repeatable",
    )  # fmt: skip
    p_sub.add_argument(
        "--no-wait", action="store_true", help="print the job ids and return at once"
    )
    p_sub.set_defaults(func=_cmd_submit)

    add_derive_parser(sub)

    add_cache_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``medxfer`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # everything after a bare "--" goes to pytest (medxfer calibrate smoke -- -n 2)
    split = argv.index("--") if "--" in argv else len(argv)
    args = build_parser().parse_args(argv[:split])
    args.pytest_args = argv[split + 1 :]
    from harness.huge_pages import request_huge_pages
    from harness.zoo.hub import sync_hub_offline

    sync_hub_offline()  # before anything imports the hub client (timm does)
    request_huge_pages()  # before anything allocates a tensor (c10 reads it once)
    try:
        return int(args.func(args))
    except (ValueError, RuntimeError, FileNotFoundError) as exc:
        print(f"medxfer {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
