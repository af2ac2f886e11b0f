"""Peak memory of loading a prepared split and extracting its features, against N images.

For each N in ``--counts`` and each mode, one child process writes a built dataset's
archive through the cache service (the real codec, :class:`harness.data.prepare.SplitArchive`,
under the key :func:`harness.data.prepare.prepare` expects: N random uint8 ``--source`` px
grayscale images in ``train``, 8 in ``val`` and ``test``), then a *fresh* child process
(so peaks do not mix) does what a case does with it:

1. :func:`harness.data.prepare.load_splits`: the key and the sha256 of every array are
   checked, then the splits are loaded;
2. :func:`harness.cache.keys.array_digest` of the train images (the case's data digest);
3. the decoded-image cache's resized copy (:func:`harness.features_stream.resized_images`)
   and the forward over it into a memory-mapped feature file
   (:func:`harness.features_stream.extract_resized`).

It reports its peak RSS (``ru_maxrss``) after step 3. Modes:

- ``lazy`` (now): the archive is written uncompressed and the images are a read-only
  memory map; the checksum streams through the map, dropping pages as it goes;
- ``eager`` (before): the archive is written compressed (``np.savez_compressed``, as
  medxfer did before) and read whole, the checksum decompressing every array
  (the previous ``SplitArchive`` code, restored in the child).

    python tests/perf/prepared_memory.py --counts 2000 20000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

CARD = {
    "name": "perf_prepared",
    "version": 1,
    "modality": "synthetic",
    "task": "binary",
    "classes": ("a", "b"),
    "reader": {"format": "npz", "file": "perf.npz"},
    "primary_metric": "accuracy",
    "metrics": ("accuracy",),
    "builder": {"name": "cxr_lesion", "seed": 0, "counts": {"train": 8, "val": 4, "test": 4}},
}


def _card():
    from harness.config.cards import DatasetCard

    return DatasetCard(**CARD)


def _eager_codec() -> None:
    """Restore the pre-lazy reading and writing: compressed, read whole, digest in memory."""
    from harness.cache.keys import arrays_digest
    from harness.data import npz, prepare

    def write(self, handle, value, entry) -> None:
        arrays = npz.npz_arrays(value, str(entry.path))
        meta = {"key": entry.text, "content_sha256": arrays_digest(arrays)}
        np.savez_compressed(handle, **arrays, **{npz.META_KEY: npz.meta_array(meta)})

    def digest(path: Path, skip: tuple[str, ...] = ()) -> str:
        with np.load(path, allow_pickle=False) as archive:
            return arrays_digest(
                {name: archive[name] for name in archive.files if name not in skip}
            )

    prepare.SplitArchive.write = write
    prepare.archive_digest = digest
    prepare.read_npz = lambda path, task, classes, **_: npz.read_npz(path, task, classes)


def write_child(args: argparse.Namespace) -> None:
    from harness.cache.store import STORE
    from harness.data.npz import SplitData
    from harness.data.prepare import BUILT, _built_entry

    if args.mode == "eager":
        _eager_codec()
    rng = np.random.default_rng(0)
    splits = {}
    for split, n in (("train", args.count), ("val", 8), ("test", 8)):
        images = np.empty((n, args.source, args.source), dtype=np.uint8)
        for start in range(0, n, 1000):
            stop = min(start + 1000, n)
            images[start:stop] = rng.integers(0, 256, (stop - start, args.source, args.source))
        splits[split] = SplitData(images, (np.arange(n) % 2).astype(np.int64))
    STORE.get_or_compute(BUILT, _built_entry(_card()), lambda: splits)


def measure_child(args: argparse.Namespace) -> None:
    import torch

    from harness.cache.keys import array_digest
    from harness.config.cards import get_model_card
    from harness.data.prepare import load_splits
    from harness.features_stream import extract_resized, resized_images
    from harness.zoo import build_model
    from harness.zoo.build import model_preprocessing

    if args.mode == "eager":
        _eager_codec()
    torch.set_num_threads(args.threads)
    card = get_model_card(args.model)
    built = build_model(card)
    module = built.module.eval()
    pre = model_preprocessing(card, args.input_size)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    images = load_splits(_card())["train"].images
    digest = array_digest(images)
    folder = Path(args.folder)
    resized = resized_images(images, digest, pre, folder / "decoded")
    out = np.lib.format.open_memmap(
        folder / "features.npy", "w+", np.float32, (len(images), built.feature_dim)
    )
    rows = len(extract_resized(module, resized, pre, torch.device("cpu"), args.batch_size, out=out))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = {"rows": rows, "peak_kib": peak, "before_kib": before, "mapped": type(images).__name__}
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tf_efficientnet_lite0.in1k_pip")
    parser.add_argument("--input-size", type=int, default=64)
    parser.add_argument("--source", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--counts", type=int, nargs="+", default=[2000, 20000])
    parser.add_argument("--modes", nargs="+", default=["eager", "lazy"], choices=["eager", "lazy"])
    parser.add_argument("--child", choices=["write", "measure"], help=argparse.SUPPRESS)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "write":
        write_child(args)
        return
    if args.child == "measure":
        measure_child(args)
        return
    rows = []
    for mode in args.modes:
        for count in args.counts:
            with tempfile.TemporaryDirectory() as tmp:
                env = {**os.environ, "MEDXFER_HOME": str(Path(tmp) / "home")}
                common = [
                    sys.executable, __file__, "--mode", mode, "--count", str(count),
                    "--folder", tmp, "--model", args.model, "--input-size", str(args.input_size),
                    "--source", str(args.source), "--batch-size", str(args.batch_size),
                    "--threads", str(args.threads),
                ]  # fmt: skip
                subprocess.run([*common, "--child", "write"], check=True, env=env)
                archive = Path(tmp) / "home" / "data" / CARD["name"] / "v1" / "perf.npz"
                size = archive.stat().st_size
                done = subprocess.run(
                    [*common, "--child", "measure"], check=True, env=env, capture_output=True,
                    text=True,
                )  # fmt: skip
                result = json.loads(done.stdout.strip().splitlines()[-1])
                rows.append((mode, count, size, result))
                print(mode, count, result, file=sys.stderr)
    print(
        f"{args.model} at {args.input_size} px from {args.source} px grayscale, batch "
        f"{args.batch_size}, {args.threads} torch thread(s)"
    )
    print("| mode | images | archive (MiB) | images type | peak RSS (MiB) | ratio to first N |")
    print("|---|---:|---:|---|---:|---:|")
    firsts: dict[str, int] = {}
    for mode, count, size, result in rows:
        peak = result["peak_kib"]
        base = firsts.setdefault(mode, peak)
        print(
            f"| {mode} | {count:,} | {size / 2**20:.0f} | {result['mapped']} | "
            f"{peak / 1024:.0f} | {peak / base:.3f} |"
        )


if __name__ == "__main__":
    main()
