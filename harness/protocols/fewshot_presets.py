"""Peer presets of the few-shot protocol: ssl-transfer's and SSL_medicalimaging's ProtoNet.

Both peers run the same evaluator (SSL_medicalimaging's ``few_shot.py`` is a modified copy
of ssl-transfer's): per episode ``torch.randperm(n_classes)[:n_way]`` picks the classes
(so ``n_way`` larger than the number of classes silently becomes that number), each class's
``DataLoader(shuffle=True)`` yields ``n_support + n_query`` distinct images, one
``randperm`` splits them into support and query, prototypes are support means, the distance
is the squared Euclidean ``euclidean_dist``, ``log_softmax(-dists).max`` predicts, and the
result is ``np.mean`` / ``1.96 * np.std / sqrt(iter_num)`` of the per-episode accuracies
(population std). That is the medxfer default's procedure, so a preset only sets the
config's fields:

* ``pool``: the whole dataset (``ConcatDataset([train, test])`` of the peer's splits, which
  is medxfer's train + val + test; for CheXpert SSL_medicalimaging reads ``train.csv``
  only, medxfer's test being the official ``valid.csv``, so the pool is train + val);
* ``pool_cap``: SSL_medicalimaging's pre-built ``sub_meta`` of the first 10,001 images for
  CheXpert, ChestX, EyePACS and STOIC (:mod:`harness.protocols.fewshot_pool`);
* ``n_way`` / ``n_shot`` / ``n_query`` / ``episodes``: the peers' command lines.

Neither peer normalises features and both report the same interval, so no field changes
there. Differences that remain, none of which moves the expected number: the peers' RNG
streams (torch's global generator through ``DataLoader`` internals; ssl-transfer's
12-worker loader and its CD-FSL loaders set no usable seed) are replaced by a seeded
``numpy`` draw of the same distribution; distances are float64 instead of the peers'
float32; accuracies are fractions, not percentages. A peer run that draws a class with
fewer than ``n_support + n_query`` images crashes in ``default_collate`` (short batch), so
the presets keep ``on_small_class="error"``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from harness.protocols.fewshot import FewShotConfig
from harness.protocols.peer_normalisation import peer_normalisation, with_normalisation
from harness.protocols.registry import register_preset

if TYPE_CHECKING:
    from harness.protocols.case import CaseRun

# The peers' eval transform: TransformLoader's Scale / Resize([int(224 * 1.15)] * 2), i.e.
# a 257 x 257 squash with torchvision's default bilinear filter, then CenterCrop(224).
SQUASH_257_BILINEAR: dict[str, Any] = {
    "input_size": 224,
    "interpolation": "bilinear",
    "crop_pct": 224 / 257,
    "crop_mode": "squash",
}
# prepare_submeta.py's transform for the sub_meta datasets: Resize(224, BICUBIC) of the
# short side, then CenterCrop(224); few_shot.py only normalises the stored tensors.
SUBMETA_224_BICUBIC: dict[str, Any] = {
    "input_size": 224,
    "interpolation": "bicubic",
    "crop_pct": 1.0,
    "crop_mode": "center",
}
SUBMETA_CAP = 10_001  # prepare_submeta.py: `if i > 10000: break` keeps indices 0..10000
# medxfer card-name prefixes of SSL_medicalimaging's sub_meta datasets (its chexpert,
# chestx, diabetic_retinopathy and stoic).
SUBMETA_DATASETS = ("chexpert", "chestxray14", "eyepacs", "stoic")
# Cards whose test split is CheXpert's official valid.csv, which SSL_medicalimaging never
# reads (its train and test are both cut from train.csv).
TRAIN_CSV_ONLY_DATASETS = ("chexpert",)
PEER_DEFAULT_WAY = 5  # --n-way default of both few_shot.py


def _has_prefix(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(f"{p}_") for p in prefixes)


def peer_n_way(requested: int, num_classes: int) -> int:
    """The ways a peer episode really has: ``randperm(num_classes)[:requested]``.

    Args:
        requested: The ``--n-way`` given.
        num_classes: Classes of the dataset.

    Returns:
        ``min(requested, num_classes)``.
    """
    return min(int(requested), int(num_classes))


def ssl_medicalimaging_preprocessing(dataset: str) -> dict[str, Any]:
    """The eval transform SSL_medicalimaging's few-shot run applies to a dataset's images.

    The sub_meta datasets were transformed once by ``prepare_submeta.py`` (224 bicubic
    short side, center crop); the others go through few_shot.py's 257 squash. The preset's
    registered ``preprocessing`` is the latter; the former applies per dataset.

    Args:
        dataset: The medxfer dataset card name.

    Returns:
        Overrides of the model card's eval preprocessing.
    """
    if _has_prefix(dataset, SUBMETA_DATASETS):
        return dict(SUBMETA_224_BICUBIC)
    return dict(SQUASH_257_BILINEAR)


@register_preset(
    "fewshot",
    "ssl-transfer",
    version=2,
    # its readme: --no-norm for SimCLR-v1 / -v2 only
    preprocessing=with_normalisation(SQUASH_257_BILINEAR, "raw-input-models"),
    source="linusericsson/ssl-transfer@416913f:few_shot.py",
    summary=(
        "ssl-transfer's few_shot.py defaults: 5-way (fewer when the dataset has fewer "
        "classes), 5-shot, 15 queries, 600 episodes from the whole dataset, 257 squash + "
        "center crop 224"
    ),
)
def ssl_transfer_fewshot(case: CaseRun) -> FewShotConfig:
    """ssl-transfer's few-shot evaluation (linusericsson/ssl-transfer@416913f:few_shot.py).

    Its command-line defaults (``--n-way 5 --n-support 5 --n-query 15 --iter-num 600``);
    the dataset card's ``fewshot.n_way`` is not used (ssl-transfer runs 5-way everywhere).
    Episodes come from ``ConcatDataset([trainval, test])`` of
    linusericsson/ssl-transfer@416913f:datasets/few_shot_dataset.py (the CD-FSL loaders,
    e.g. datasets/chestx.py, read the whole index), i.e. the whole dataset.

    Args:
        case: The case; reads ``case.task.num_classes``.

    Returns:
        The config.
    """
    return FewShotConfig(
        n_way=peer_n_way(PEER_DEFAULT_WAY, case.task.num_classes),
        n_shot=5,
        n_query=15,
        episodes=600,
        pool="train+val+test",
        seed=0,
        on_small_class="error",
    )


@register_preset(
    "fewshot",
    "ssl-medicalimaging",
    version=2,
    # the runner passes --no-norm to few_shot.py for SimCLR-v1 only
    preprocessing=lambda case: {
        **ssl_medicalimaging_preprocessing(case.case.dataset.name),
        **peer_normalisation(case.case.model.preprocessing, "raw-input-models"),
    },
    source="jonahanton/SSL_medicalimaging@77fceef:few_shot.py",
    summary=(
        "SSL_medicalimaging's runner: the card's n-way, 20-shot, 15 queries, 600 episodes "
        "from the whole dataset; CheXpert, ChestX, EyePACS and STOIC capped at 10,001 images"
    ),
)
def ssl_medicalimaging_fewshot(case: CaseRun) -> FewShotConfig:
    """SSL_medicalimaging's few-shot runs (jonahanton/SSL_medicalimaging@77fceef:few_shot.py).

    ``runner_script.sh`` passes ``--n-way {2, 5} --n-support 20`` (the way is the dataset
    card's ``fewshot.n_way``, else the script's default 5) with the default 15 queries and
    600 episodes. The pool is ``ConcatDataset([train, test])`` of
    jonahanton/SSL_medicalimaging@77fceef:datasets/few_shot_dataset.py, the whole dataset;
    for CheXpert both of its splits come from ``train.csv``, so the official validation
    images (medxfer's test) are left out. CheXpert, ChestX, EyePACS and STOIC load the
    ``sub_meta`` of datasets/prepare_submeta.py, the first 10,001 images of that pool (the
    script as committed calls an undefined ``get_train_valid_test_dset``; the pickles came
    from its working twin ``get_train_val_test_dset``). Those four were also transformed
    by prepare_submeta.py, not by few_shot.py: see :func:`ssl_medicalimaging_preprocessing`.
    Mean and std are ImageNet's except for the runner's ``--no-norm`` (SimCLR-v1) and the
    histogram-normalised MIMIC-CheXpert models (version 2,
    :mod:`harness.protocols.peer_normalisation`; version 1 kept the card's).

    Args:
        case: The case; reads ``case.case.dataset`` (``name``, ``fewshot``) and
            ``case.task.num_classes``.

    Returns:
        The config.
    """
    card = case.case.dataset
    requested = card.fewshot.get("n_way") or PEER_DEFAULT_WAY
    return FewShotConfig(
        n_way=peer_n_way(requested, case.task.num_classes),
        n_shot=20,
        n_query=15,
        episodes=600,
        pool="train+val" if _has_prefix(card.name, TRAIN_CSV_ONLY_DATASETS) else "train+val+test",
        pool_cap=SUBMETA_CAP if _has_prefix(card.name, SUBMETA_DATASETS) else None,
        seed=0,
        on_small_class="error",
    )
