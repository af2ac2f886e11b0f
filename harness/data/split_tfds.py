"""Split rule ``tfds_record_order``: the first N records of TFDS splits, without TFDS.

VTAB-1k (google-research/task_adaptation@d7630d3:task_adaptation/data/patch_camelyon.py)
loads ``tfds.builder("patch_camelyon:2.*.*")`` and trains on ``"train[:800]"``, validates
on ``"validation[:200]"`` and tests on ``"test"``: the first records of each split in the
order TFDS wrote them. That order is TFDS's deterministic shuffle ("S3"):

* the builder yields one example per .h5 row with the key ``"%s_%d" % (split, i)``, where
  ``split`` is ``train`` / ``valid`` / ``test`` and ``i`` the row
  (tensorflow/datasets@15f9f63:tensorflow_datasets/image_classification/patch_camelyon.py);
* the writer hashes each key with ``hashing.Hasher(salt)``: ``md5(salt_bytes)`` updated
  with the key's UTF-8 bytes, read as a 128-bit int (``int(hexdigest, 16)``); the salt is
  the TFDS split name (``train``, ``validation``, ``test``), ``hash_salt=split_generator.name``
  in ``dataset_builder._prepare_split``
  (tensorflow/datasets@0d456ae:tensorflow_datasets/core/hashing.py);
* ``shuffle.Shuffler`` yields the records by ascending hash (in memory, or through 1,000
  buckets cut by the hash's top bits and sorted each: the same global order), and the
  writer fills the shards one after another in that order
  (tensorflow/datasets@10df6c2:tensorflow_datasets/core/tfrecords_writer.py);
* ``split[:n]`` takes absolute records ``0..n-1`` across the shards in shard order
  (``tfrecords_reader._get_dataset_files``), so it is the n smallest hashes.

patch_camelyon 2.0.0 is "S3 with new hashing function" (the md5 one; the version notes of
tensorflow-datasets 1.2.0). hashing.py and shuffle.py of the PyPI wheels 1.2.0, 1.3.0,
2.0.0, 3.2.1 and 4.9.10 give the same order for every patch_camelyon key
(tests/test_split_tfds_order.py holds golden values computed with them). Later versions
only map ``\\`` to ``/`` in string keys, which these keys lack.

diabetic_retinopathy_detection (VTAB's Retinopathy) keys each example by its image name,
``10_left`` (``yield name, record``,
tensorflow/datasets@0560e68:tensorflow_datasets/image_classification/
diabetic_retinopathy_detection.py): ``key_format: "{stem}"``, the image file's name
without its extension.

This rule reproduces that order from the reader's rows: the row ``i`` of source split
``s``, read from the file ``f``, gets the key ``key_format.format(split=s, index=i,
stem=<f without folder and extension>)``, hashed with the TFDS split name as salt.
``train`` and ``val`` are the first ``train`` / ``val`` records of their split, ``test``
the whole split; rows are returned in ascending order.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import ClassVar

import numpy as np

from harness.data import DatasetError
from harness.data.registry import register_split_rule
from harness.data.split_rules import check_split_keys, source_split
from harness.data.table import DatasetContext, SplitInput

RULE = "tfds_record_order"


def tfds_record_order(salt: str, keys: list[str]) -> np.ndarray:
    """Positions of ``keys`` in the order TFDS writes their records (ascending md5 hash).

    Args:
        salt: the TFDS split name, the salt of ``tensorflow_datasets.core.hashing.Hasher``.
        keys: the example keys the builder yields, in generation order.

    Returns:
        int64 indices into ``keys``, first record first.
    """
    salted = hashlib.md5(salt.encode("utf-8"))
    digests = bytearray()
    for key in keys:
        md5 = salted.copy()
        md5.update(key.encode("utf-8"))
        digests += md5.digest()
    # The big-endian halves of the digest compare as int(hexdigest, 16) does.
    halves = np.frombuffer(bytes(digests), dtype=">u8").reshape(-1, 2)
    return np.lexsort((halves[:, 1], halves[:, 0])).astype(np.int64)


@dataclass(frozen=True, kw_only=True)
class TfdsRecordOrderParams:
    """How many records to take, and how TFDS named the splits and keyed the examples.

    Attributes:
        train: the first ``train`` records of the train split (``train[:800]``).
        val: the first ``val`` records of the validation split (``validation[:200]``).
        names: our split -> the reader's source split, for names that differ
            (``{val: valid}``).
        tfds_splits: our split -> the TFDS split name, the hash salt, for names that
            differ (``{val: validation}``).
        key_format: the builder's example key, with ``{split}`` the source split name,
            ``{index}`` the row within it (patch_camelyon: ``"{split}_{index}"``) and
            ``{stem}`` the row's image file name without extension
            (diabetic_retinopathy_detection: ``"{stem}"``).
    """

    NEEDS_SOURCE_SPLITS: ClassVar[bool] = True
    train: int = 800
    val: int = 200
    names: dict[str, str] = field(default_factory=dict)
    tfds_splits: dict[str, str] = field(default_factory=dict)
    key_format: str = "{split}_{index}"

    def validate(self) -> None:
        """Positive sizes, known split names, a key template with ``{index}``."""
        if self.train < 1 or self.val < 1:
            raise ValueError(f"'train' and 'val' must be >= 1, got {self.train}, {self.val}")
        check_split_keys(self.names, "names")
        check_split_keys(self.tfds_splits, "tfds_splits")
        try:
            keys = {self.key_format.format(split="s", index=i, stem=f"f{i}") for i in (0, 1)}
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(
                f"'key_format' may use only {{split}}, {{index}} and {{stem}}, got "
                f"{self.key_format!r}"
            ) from exc
        if len(keys) < 2 or "\\" in self.key_format:
            raise ValueError(
                f"'key_format' must hold {{index}} or {{stem}} and no backslash, got "
                f"{self.key_format!r}"
            )


def _stems(data: SplitInput, rows: np.ndarray, ctx: DatasetContext, key_format: str) -> list[str]:
    """The image file name (no folder, no extension) of each row, when the key uses it."""
    if "{stem}" not in key_format:
        return [""] * len(rows)
    if data.paths is None:
        raise DatasetError(
            f"{ctx.card}: field 'split.key_format' uses {{stem}}, but the reader's images "
            "are not files"
        )
    return [PurePosixPath(str(data.paths[row])).stem for row in rows]


@register_split_rule(RULE, version=1, params=TfdsRecordOrderParams)
def tfds_record_order_rule(
    params: TfdsRecordOrderParams, data: SplitInput, ctx: DatasetContext
) -> dict[str, np.ndarray]:
    """The first ``train`` / ``val`` records of those splits in TFDS order; test whole."""
    source = source_split(data, ctx, RULE)
    _, n_source = data.positions()
    if len(data) != n_source:
        raise DatasetError(
            f"{ctx.card}: split rule {RULE}: the label policy dropped {n_source - len(data)} "
            "of the reader's rows; TFDS's record order counts every row of a split"
        )
    wanted = {"train": params.train, "val": params.val, "test": None}
    out = {}
    for split, n in wanted.items():
        name = params.names.get(split, split)
        rows = np.flatnonzero(source == name)  # the reader's rows of a split, in file order
        if not len(rows):
            raise DatasetError(
                f"{ctx.card}: split rule {RULE}: no source split {name!r} (for {split}); the "
                f"reader gives {', '.join(sorted(set(source.tolist())))}"
            )
        if n is None:
            out[split] = rows
            continue
        if n > len(rows):
            raise DatasetError(
                f"{ctx.card}: field 'split.{split}': {n} records asked for, but source split "
                f"{name!r} has {len(rows)} rows"
            )
        keys = [
            params.key_format.format(split=name, index=i, stem=stem)
            for i, stem in enumerate(_stems(data, rows, ctx, params.key_format))
        ]
        order = tfds_record_order(params.tfds_splits.get(split, split), keys)
        out[split] = np.sort(rows[order[:n]])
    return out
