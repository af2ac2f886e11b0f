"""Write the small TensorFlow checkpoints that tests/test_convert.py reads without TensorFlow.

Run once, in a scratch environment that has TensorFlow (never the project's venv)::

    python3 -m venv /tmp/tfvenv && /tmp/tfvenv/bin/pip install tensorflow-cpu
    /tmp/tfvenv/bin/python tests/data/make_tf_checkpoint.py

It writes, under ``tests/data/tf_checkpoint/``:

- ``tf1/model.ckpt-7.{index,data-00000-of-00001}``: a TF1 ``Saver`` checkpoint (the
  format of the SimCLR v1 / v2 releases) holding SimCLR-named variables
  (``base_model/conv2d/kernel``, ``base_model/batch_normalization_1/moving_mean``, ...),
  tensors of several dtypes and shapes (float16/32/64, bfloat16, int8/32/64, uint8,
  bool, scalars, an empty tensor), a LARS-style ``/Momentum`` slot and enough further
  variables that the index spans several SSTable blocks and restart points;
- ``tf2/ckpt-1.{index,data-00000-of-00001}``: a TF2 ``tf.train.Checkpoint`` (its
  object graph is a string tensor, which the reader skips);
- ``expected.npz``: every numeric tensor of both, as TensorFlow's own
  ``tf.train.load_checkpoint`` reads them (keys ``tf1:<name>`` / ``tf2:<name>``;
  bfloat16 is stored as its float32 value).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import tensorflow as tf

OUT = Path(__file__).resolve().parent / "tf_checkpoint"


def tf1_variables(rng: np.random.Generator) -> dict[str, tuple[np.ndarray, tf.DType]]:
    """Name -> (value, dtype) of the TF1 checkpoint."""
    variables = {
        "base_model/conv2d/kernel": (rng.normal(size=(3, 3, 2, 4)), tf.float32),
        "base_model/conv2d/kernel/Momentum": (rng.normal(size=(3, 3, 2, 4)), tf.float32),
        "base_model/batch_normalization/gamma": (rng.normal(size=(4,)), tf.float32),
        "base_model/batch_normalization/beta": (rng.normal(size=(4,)), tf.float32),
        "base_model/batch_normalization_1/moving_mean": (rng.normal(size=(4,)), tf.float32),
        "base_model/batch_normalization_1/moving_variance": (rng.random(size=(4,)), tf.float32),
        "head_supervised/linear_layer/dense/kernel": (rng.normal(size=(4, 3)), tf.float64),
        "half/weights": (rng.normal(size=(2, 5)), tf.float16),
        "brain/bfloat": (rng.normal(size=(6,)), tf.bfloat16),
        "ints/int8": (rng.integers(-100, 100, size=(7,)), tf.int8),
        "ints/int32": (rng.integers(-(2**30), 2**30, size=(2, 3)), tf.int32),
        "ints/uint8": (rng.integers(0, 255, size=(5,)), tf.uint8),
        "flags/bool": (rng.random(size=(3, 2)) > 0.5, tf.bool),
        "scalar/float": (np.array(2.5), tf.float32),
        "empty/tensor": (np.zeros((0, 3)), tf.float32),
    }
    # many small variables with long shared prefixes: several index blocks, restarts
    for i in range(300):
        name = f"base_model/block_group{i % 4}/padding_variable_with_a_long_name_{i:04d}"
        variables[name] = (rng.normal(size=(2,)), tf.float32)
    return variables


def write_tf1(rng: np.random.Generator) -> dict[str, np.ndarray]:
    folder = OUT / "tf1"
    graph = tf.Graph()
    with graph.as_default():
        for name, (value, dtype) in tf1_variables(rng).items():
            tf.compat.v1.Variable(tf.constant(value, dtype=dtype), name=name)
        step = tf.compat.v1.train.get_or_create_global_step()
        saver = tf.compat.v1.train.Saver()
        with tf.compat.v1.Session() as session:
            session.run(tf.compat.v1.global_variables_initializer())
            session.run(step.assign(7))
            prefix = saver.save(session, str(folder / "model.ckpt"), global_step=7)
    (folder / "checkpoint").unlink(missing_ok=True)
    for extra in folder.glob("*.meta"):
        extra.unlink()
    return read_back(prefix, "tf1")


def write_tf2(rng: np.random.Generator) -> dict[str, np.ndarray]:
    folder = OUT / "tf2"
    module = tf.Module()
    module.kernel = tf.Variable(rng.normal(size=(2, 2)).astype(np.float32))
    module.count = tf.Variable(np.int64(3))
    prefix = tf.train.Checkpoint(model=module).write(str(folder / "ckpt-1"))
    return read_back(prefix, "tf2")


def read_back(prefix: str, tag: str) -> dict[str, np.ndarray]:
    reader = tf.train.load_checkpoint(prefix)
    out = {}
    for name, dtype in reader.get_variable_to_dtype_map().items():
        if dtype == tf.string:
            continue
        value = reader.get_tensor(name)
        if dtype == tf.bfloat16:
            value = tf.cast(tf.constant(value, dtype=tf.bfloat16), tf.float32).numpy()
        out[f"{tag}:{name}"] = np.asarray(value)
    return out


def main() -> None:
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True)
    rng = np.random.default_rng(20201016)
    expected = write_tf1(rng) | write_tf2(rng)
    np.savez(OUT / "expected.npz", **expected)
    total = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    print(f"wrote {len(expected)} tensors, {total} bytes under {OUT}")


if __name__ == "__main__":
    main()
