"""What feature-reuse's target normalisation does to k-NN on data like its targets.

feature-reuse normalises by the target's statistics and feeds its single-channel targets
as grey in the first channel (:data:`harness.protocols.peer_normalisation.FEATURE_REUSE_STATS`).
The demo datasets are none of its targets, so the preset keeps their cards' values there.
This script stands the demo's grey chest X-rays in for CheXpert and its colour fundus
photographs for APTOS2019 and prints, per case, the ``knn`` preset's primary metric with
the card's normalisation (preset version 1), with the stand-in's mean / std on three
channels, and with the stand-in's whole rule (version 2: grey in the first channel for
CheXpert), plus the mean cosine between version 1's and version 2's test features.

    MEDXFER_HOME=<home> .venv/bin/python tests/perf/target_normalisation.py [--profile smoke]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from preset_effects import MODELS, _primary, feature_agreement

STAND_INS = {"demo_cxr_lesion": "chexpert", "demo_fundus_lesion": "aptos2019"}


def main(argv: list[str] | None = None) -> None:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=("smoke", "demo"), default="smoke")
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    args = parser.parse_args(argv)

    from harness.config.suites import load_suite
    from harness.protocols.case import CaseRun
    from harness.protocols.peer_normalisation import FEATURE_REUSE_STATS
    from harness.protocols.registry import get_protocol

    spec = get_protocol("knn")
    results = Path(tempfile.mkdtemp(prefix="medxfer-target-norm-"))
    cases = [
        dataclasses.replace(case, preset="feature-reuse")
        for case in load_suite(args.profile).cases()
        if case.protocol == "knn"
        and case.dataset.name in STAND_INS
        and case.model.name in args.models
    ]
    started = time.perf_counter()
    print("| case | stand-in | card's mean / std (v1) | stand-in's mean / std, RGB | "
          "stand-in's rule (v2) | feature cosine v1 / v2 |")  # fmt: skip
    print("|---|---|---:|---:|---:|---:|")
    for case in cases:
        stand_in = FEATURE_REUSE_STATS[STAND_INS[case.dataset.name]]
        values, features = [], []
        for stats in (None, {**stand_in, "channels": "rgb"}, stand_in):
            FEATURE_REUSE_STATS.pop(case.dataset.name, None)
            if stats is not None:
                FEATURE_REUSE_STATS[case.dataset.name] = stats
            run = CaseRun(case, results, device="cpu")
            values.append(_primary(spec, run, spec.make_config(run)))
            features.append(run.features())
        FEATURE_REUSE_STATS.pop(case.dataset.name, None)
        cosine = feature_agreement(features[0], features[2])
        shown = " | ".join(f"{value:.4f}" for value in values)
        print(f"| {case.case_id} | {STAND_INS[case.dataset.name]} | {shown} | {cosine:.4f} |")
    print(f"\n{len(cases)} cases in {(time.perf_counter() - started) / 60:.1f} min")


if __name__ == "__main__":
    main()
