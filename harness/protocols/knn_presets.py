"""Peer presets of the k-NN protocol.

``feature-reuse``: ChrisMats/feature-reuse@736d31b:defaults/trainer.py (``knn_predict``,
from leftthomas/SimCLR, with ``build_feature_bank`` and ``test``), run with ``--knn``:

* The memory bank is the **train split only** (``fbank_loader`` over the train set, with
  the validation transform), L2-normalised (``F.normalize``); queries are the
  L2-normalised test features: cosine similarity.
* ``k = knn_nhood = 200`` for every dataset (defaults/datasets.py), temperature
  ``knn_t = 0.1``: each of the k most similar bank images votes ``exp(sim / 0.1)`` for
  its class; the class scores are divided by their sum (probabilities). Multi-label
  datasets score each label as the weight-normalised mean of the neighbours' labels.
* The metric class (utils/metrics.py ``DefaultClassificationMetrics.add_preds``) then
  applies ``Softmax(dim=1)`` to those probabilities: the argmax (accuracy, recall, kappa)
  is unchanged, ROC AUC of a multi-class task moves; every metric is rounded to 3
  decimals (``round(value, 3)``).
* Features: Resize((256, 256)) then CenterCrop(224) (bilinear), the dataset's
  normalisation (params.json ``val_transforms`` / ``test_transforms``; version 2: the
  target's statistics and single-channel rule,
  :data:`harness.protocols.peer_normalisation.FEATURE_REUSE_STATS`).

Not reproduced (recorded in docs/protocols.md): the peer's ``topk(k=200)`` fails on a bank
of fewer than 200 images, where k is clamped here; its multi-class ROC AUC is one-vs-one
macro (``multi_class="ovo"``), the harness's metric vocabulary has one-vs-rest.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from harness.protocols.finetune.presets_feature_reuse import FEATURE_REUSE_PREPROCESSING
from harness.protocols.knn import KnnConfig
from harness.protocols.registry import register_preset

if TYPE_CHECKING:
    from harness.protocols.case import CaseRun

FEATURE_REUSE = (
    "ChrisMats/feature-reuse@736d31b:defaults/trainer.py (knn_predict, build_feature_bank)"
    " + utils/metrics.py + defaults/datasets.py"
)


@register_preset(
    "knn",
    "feature-reuse",
    version=2,
    preprocessing=FEATURE_REUSE_PREPROCESSING,
    source=FEATURE_REUSE,
    summary="k = 200, T = 0.1, cosine, train-only memory bank, softmax over the vote "
    "probabilities, metrics rounded to 3 decimals; Resize(256, 256) + CenterCrop(224), the "
    "target's mean / std",
)
def feature_reuse(case: CaseRun) -> KnnConfig:
    """feature-reuse's k-NN evaluation (the same under every profile).

    Differences from the medxfer default: ``ks=(200,)``, ``primary_k=200`` (default 20 and
    200, 20 primary); ``temperature=0.1`` (0.07); ``bank="train"`` (train+val);
    ``softmax_scores=True``; ``round_metrics=3``; preprocessing 224 px, bilinear, square
    resize to 256 then centre crop 224, normalised by the target's statistics. Same: cosine similarity (``normalize=True``),
    exponential vote weights normalised to probabilities.
    """
    return KnnConfig(
        ks=(200,),
        primary_k=200,
        temperature=0.1,
        normalize=True,
        bank="train",
        softmax_scores=True,
        round_metrics=3,
    )
