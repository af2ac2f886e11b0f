"""Few-shot cases: prototypical networks over seeded episodes of frozen features.

Episodes are drawn from the pooled splits of ``FewShotConfig.pool`` (train+test, as the
peers); the case's primary value is the mean episode accuracy (ProtoNet's only measure).
"""

from harness.case import CaseRun
from harness.protocols import fewshot

PROTOCOL = "fewshot"


def test_fewshot(bench: CaseRun) -> None:
    config = bench.configure(fewshot.FewShotConfig.for_profile(bench.profile.name))
    features = bench.features(fewshot.pool_splits(config.pool))
    pool = fewshot.make_pool(features, config.pool)
    n_way_default = bench.case.dataset.fewshot.get("n_way")
    result = bench.run_protocol(fewshot.run, pool, bench.task, config, n_way_default)
    bench.record(result, fewshot.VERSION, config.to_dict())
