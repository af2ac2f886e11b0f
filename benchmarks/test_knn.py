"""k-NN cases: weighted cosine k-nearest-neighbour votes on frozen features (DINO-style)."""

from harness.case import CaseRun
from harness.protocols import knn

PROTOCOL = "knn"


def test_knn(bench: CaseRun) -> None:
    config = bench.configure(knn.KnnConfig.for_profile(bench.profile.name))
    features = bench.features()
    result = bench.run_protocol(
        knn.run, features["train"], features["val"], features["test"], bench.task, config
    )
    bench.record(result, knn.VERSION, config.to_dict())
