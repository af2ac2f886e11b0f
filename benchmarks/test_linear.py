"""Linear-probe cases: L2 logistic regression on frozen features (ssl-transfer protocol)."""

from harness.case import CaseRun
from harness.protocols import linear

PROTOCOL = "linear"


def test_linear(bench: CaseRun) -> None:
    config = bench.configure(linear.LinearConfig.for_profile(bench.profile.name))
    features = bench.features()
    result = bench.run_protocol(
        linear.run, features["train"], features["val"], features["test"], bench.task, config
    )
    bench.record(result, linear.VERSION, config.to_dict())
