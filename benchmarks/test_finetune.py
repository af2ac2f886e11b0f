"""Fine-tuning cases: backbone + new linear head trained end to end (ssl-transfer / SM protocol)."""

import re

from harness import paths
from harness.case import CaseRun
from harness.protocols import finetune
from harness.zoo import build_model

PROTOCOL = "finetune"


def test_finetune(bench: CaseRun) -> None:
    config = bench.configure(finetune.FinetuneConfig.for_profile(bench.profile.name))
    size = config.input_size or bench.profile.input_size
    preprocessing = bench.case.model.preprocessing.with_input_size(size)
    model = build_model(bench.case.model)
    checkpoint_dir = paths.home() / "checkpoints" / _safe(bench.case.case_id)
    result = bench.run_protocol(
        finetune.run,
        model,
        bench.splits(),
        bench.task,
        config,
        preprocessing,
        checkpoint_dir=checkpoint_dir,
        case_id=bench.case.case_id,
        device=bench.device,
        reuse_completed=not bench.retrain,
    )
    bench.record(result, finetune.VERSION, config.to_dict())


def _safe(case_id: str) -> str:
    """A folder name from a case id: "finetune/ds/model.tag" -> "finetune__ds__model.tag"."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", case_id.replace("/", "__"))
