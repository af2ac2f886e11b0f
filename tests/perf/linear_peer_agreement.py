"""The linear presets against the peers' own estimator, on the same cached features.

ssl-transfer's probe (linusericsson/ssl-transfer@416913f:linear.py; SSL_medicalimaging's
is the same) needs ``LogisticRegression(multi_class='multinomial')``, which scikit-learn
1.8 removed. This script runs that procedure under an older scikit-learn, in its own
environment, and the ``ssl-transfer`` preset under the project's, on the same features,
and compares the selected C, the test score and the whole validation curve:

    MEDXFER_HOME=<home of a demo run> .venv/bin/python tests/perf/linear_peer_agreement.py dump /tmp/lpa
    python3 -m venv /tmp/sk17 && /tmp/sk17/bin/pip install scikit-learn==1.7.2 scipy numpy
    /tmp/sk17/bin/python tests/perf/linear_peer_agreement.py peer /tmp/lpa
    .venv/bin/python tests/perf/linear_peer_agreement.py ours /tmp/lpa
    .venv/bin/python tests/perf/linear_peer_agreement.py compare /tmp/lpa

``dump`` writes the demo suite's linear cases (``--suite``) as ``.npz`` files of float32
features and labels; ``peer`` needs only numpy and scikit-learn < 1.8 (not this package).
The peer's loop is written here from its ``LinearTester.validate`` / ``evaluate``: one
warm-started estimator, C = 1 / wd for float32 ``wd = logspace(-6, 5, 45)`` from 1e6 down,
strict ``>`` from 0, the refit on train+val from the sweep's last coefficients.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]


def dump(folder: Path, suite: str) -> None:
    """Write each linear case's (train, val, test) features and labels to ``folder``."""
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "tests" / "perf"))
    from linear_sweep import real_feature_sets

    folder.mkdir(parents=True, exist_ok=True)
    for name, (train, val, test), task in real_feature_sets([], suite):
        arrays = {"task": task.task, "metric": task.primary_metric, "classes": task.num_classes}
        for split, part in (("train", train), ("val", val), ("test", test)):
            arrays[f"x_{split}"] = part.features
            arrays[f"y_{split}"] = part.labels
        np.savez(folder / f"{name.replace(' / ', '__')}.npz", **arrays)
        print(name, train.features.shape, task.task)


def peer_sweep(case: dict[str, np.ndarray]) -> dict[str, object]:
    """ssl-transfer's validate() + evaluate() with scikit-learn's own multinomial lbfgs."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import confusion_matrix

    per_class = str(case["metric"]) == "mean_per_class_accuracy"

    def score(model: LogisticRegression, x: np.ndarray, y: np.ndarray) -> float:
        if not per_class:
            return 100.0 * model.score(x, y)
        cm = confusion_matrix(y, model.predict(x))
        with np.errstate(invalid="ignore"):
            return 100.0 * float((cm.diagonal() / cm.sum(axis=1)).mean())

    model = LogisticRegression(solver="lbfgs", multi_class="multinomial", warm_start=True)
    best, best_c, curve = 0.0, None, []
    for wd in np.logspace(-6, 5, 45).astype(np.float32):
        c = 1.0 / float(wd)
        model.set_params(C=c)
        model.fit(case["x_train"], case["y_train"])
        value = score(model, case["x_val"], case["y_val"])
        curve.append(value / 100.0)
        if value > best:
            best, best_c = value, c
    model.set_params(C=best_c)
    model.fit(
        np.concatenate([case["x_train"], case["x_val"]]),
        np.concatenate([case["y_train"], case["y_val"]]),
    )
    return {
        "C": best_c,
        "test": score(model, case["x_test"], case["y_test"]) / 100.0,
        "curve": curve,
    }


def preset_sweep(case: dict[str, np.ndarray]) -> dict[str, object]:
    """The ``ssl-transfer`` preset's probe on the same features."""
    sys.path.insert(0, str(ROOT))
    from harness.protocols.base import SplitFeatures, TaskInfo
    from harness.protocols.linear import run
    from harness.protocols.linear_presets import peer_c_values, peer_linear_config

    task, metric = str(case["task"]), str(case["metric"])
    config = peer_linear_config(task, metric, "ssl-transfer")
    splits = [SplitFeatures(case[f"x_{s}"], case[f"y_{s}"]) for s in ("train", "val", "test")]
    result = run(*splits, TaskInfo(task, int(case["classes"]), metric, (metric,)), config)
    by_c = dict((c, s) for c, s in result.details["val_curve"])
    return {
        "C": result.hyperparameters["C"],
        "test": result.metrics[config.selection_metric],
        "curve": [by_c[c] for c in peer_c_values()],
    }


def sweep_all(folder: Path, which: str) -> None:
    """Run the peer's or the preset's procedure on every dumped case; write ``which.json``."""
    from threadpoolctl import threadpool_limits

    fn = peer_sweep if which == "peer" else preset_sweep
    out = {}
    with threadpool_limits(limits=1), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path in sorted(folder.glob("*.npz")):
            with np.load(path) as archive:
                out[path.stem] = fn(dict(archive))
            print(path.stem, out[path.stem]["C"], out[path.stem]["test"], flush=True)
    (folder / f"{which}.json").write_text(json.dumps(out, indent=1))


def compare(folder: Path) -> int:
    """Print a table of both procedures' C and test score; 1 when any case differs."""
    peer = json.loads((folder / "peer.json").read_text())
    ours = json.loads((folder / "ours.json").read_text())
    print("| case | C (peer) | C (preset) | test (peer) | test (preset) | largest val-curve gap |")
    print("|---|---:|---:|---:|---:|---:|")
    differ = 0
    for name in sorted(peer):
        a, b = peer[name], ours[name]
        gap = float(np.max(np.abs(np.subtract(a["curve"], b["curve"]))))
        differ += a["C"] != b["C"] or abs(a["test"] - b["test"]) > 1e-4
        print(
            f"| {name.replace('__', ' / ')} | {a['C']:.4g} | {b['C']:.4g} | "
            f"{a['test']:.4f} | {b['test']:.4f} | {gap:.2g} |"
        )
    print(f"{len(peer) - differ} of {len(peer)} cases agree in C and test score (to 0.01 points)")
    return int(differ > 0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=("dump", "peer", "ours", "compare"))
    parser.add_argument("folder", type=Path)
    parser.add_argument("--suite", default="demo", help="dump: the suite whose linear cases")
    args = parser.parse_args(argv)
    if args.step == "dump":
        dump(args.folder, args.suite)
    elif args.step == "compare":
        return compare(args.folder)
    else:
        sweep_all(args.folder, args.step)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
