"""Data pipeline of the fine-tuning protocol: in-memory images, seeded step-based sampling.

Training draws batches from an infinite sampler. Its order is a pure function of
``(seed, position)``: epoch ``e`` is ``default_rng([seed, e]).permutation(n)``, and every
drawn sample carries an augmentation seed derived from ``(seed, position)``. A run that
resumes at step ``s`` therefore restarts the sampler at position ``s * batch_size`` and
sees exactly the batches (and random crops) an uninterrupted run would have seen, with any
number of DataLoader workers.

The peers' loaders instead iterate epochs of a shuffling DataLoader without
``drop_last``, so every epoch ends with a partial batch (:class:`EpochBatchSampler`, same
permutations and seeds, batch ``b`` of epoch ``e`` at step ``e * ceil(n / B) + b``);
feature-reuse's loader drops it (``drop_last=True``: ``n // B`` batches an epoch).
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision.transforms import v2

from harness.config.cards import Preprocessing
from harness.data.pil_resize import WidthFirstResizedCrop
from harness.data.transforms import eval_transform, normalise, to_pil_rgb
from harness.protocols.finetune.augment import (
    TF_BILINEAR,
    feature_reuse_transform,
    keras_transform,
    tf_resize_transform,
    torchvision_interpolation,
    transferability_transform,
)

Transform = Callable[[np.ndarray], torch.Tensor]

# Eval inputs are transformed once and kept in memory below this size (bytes).
_EVAL_CACHE_LIMIT = 256 * 2**20


def train_transform(
    pre: Preprocessing,
    scale: tuple[float, float],
    rotation: float = 0.0,
    augmentation: str = "crop-flip",
    keras: tuple[bool, float, float, float] = (True, 0.0, 0.0, 0.0),
) -> Transform:
    """The training augmentation: RandomResizedCrop + horizontal flip, then normalise.

    ssl-transfer / SSL_medicalimaging's fine-tuning augmentation, with the model's own
    input size, interpolation, mean and std. With ``rotation``, BenchmarkTransferLearning's
    RandomRotation follows the flip (torchvision's defaults: nearest, no expansion, fill 0).
    The crop is resized width first (:class:`~harness.data.pil_resize.WidthFirstResizedCrop`),
    so the pixels are the same under every Pillow, as the eval transform's.

    Args:
        pre: The model's preprocessing (input size possibly overridden by the profile).
        scale: RandomResizedCrop's area range (torchvision's default is ``(0.08, 1.0)``).
        rotation: RandomRotation degrees (0: none); Keras' ``rotation_range``.
        augmentation: "crop-flip", "feature-reuse" or "medical-transformers"
            (:func:`feature_reuse_transform`),
            "keras" (:func:`keras_transform`), "transferability"
            (:func:`transferability_transform`) or "none" (the eval transform, VTAB's).
        keras: ``(hflip, shift, shear, zoom)`` of the Keras augmentation.

    Returns:
        A function from a uint8 image array (H, W) or (H, W, 3) to a float tensor (3, S, S).
        It draws from torch's global RNG; :class:`ImageDataset` seeds it per sample.
    """
    if augmentation == "feature-reuse":
        return feature_reuse_transform(pre, scale)
    if augmentation == "medical-transformers":
        return feature_reuse_transform(pre, scale, jitter_p=0.8, grayscale_p=0.0)
    if augmentation == "keras":
        return keras_transform(pre, rotation, *keras)
    if augmentation == "transferability":
        return transferability_transform(pre, scale, rotation)
    if augmentation == "none":
        return model_eval_transform(pre)
    interpolation = torchvision_interpolation(pre, f"augmentation {augmentation!r}")
    transform = v2.Compose(
        [
            WidthFirstResizedCrop(
                v2.RandomResizedCrop(
                    pre.input_size, scale=scale, interpolation=interpolation, antialias=True
                )
            ),
            v2.RandomHorizontalFlip(),
            *([v2.RandomRotation(rotation)] if rotation else []),
            v2.PILToTensor(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Lambda(functools.partial(normalise, pre=pre)),
        ]
    )

    def apply(image: np.ndarray) -> torch.Tensor:
        return transform(to_pil_rgb(image))

    return apply


def model_eval_transform(pre: Preprocessing) -> Transform:
    """The eval transform: timm's, or VTAB's TF1 resize when ``pre.interpolation`` is
    :data:`~harness.protocols.finetune.augment.TF_BILINEAR`."""
    return tf_resize_transform(pre) if pre.interpolation == TF_BILINEAR else eval_transform(pre)


def sample_seed(seed: int, position: int) -> int:
    """The augmentation seed of the sample drawn at ``position`` of a seeded sampler.

    Args:
        seed: The run's seed.
        position: Index of the sample in the infinite stream (0-based).

    Returns:
        A 63-bit seed, well mixed (blake2b) so that neighbouring positions are unrelated.
    """
    digest = hashlib.blake2b(f"{seed}:{position}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


class InfiniteSampler(Sampler[tuple[int, int]]):
    """Endless seeded reshuffling epochs, starting at any position of the stream.

    Yields ``(index, augmentation seed)`` pairs.
    """

    def __init__(self, n: int, seed: int, start: int = 0) -> None:
        """Create the sampler.

        Args:
            n: Dataset size.
            seed: Seed of the permutations and augmentation seeds.
            start: Position in the stream to start at (``step * batch_size`` on resume).
        """
        if n < 1:
            raise ValueError("cannot sample from an empty dataset")
        self.n = n
        self.seed = seed
        self.start = start

    def permutation(self, epoch: int) -> np.ndarray:
        """The sample order of one epoch.

        Args:
            epoch: Epoch index.

        Returns:
            A permutation of ``range(n)``.
        """
        return np.random.default_rng([self.seed, epoch]).permutation(self.n)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        position = self.start
        while True:
            epoch, offset = divmod(position, self.n)
            order = self.permutation(epoch)
            for index in order[offset:]:
                yield int(index), sample_seed(self.seed, position)
                position += 1


class EpochBatchSampler(Sampler[list[tuple[int, int]]]):
    """Endless reshuffled epochs of ``ceil(n / batch_size)`` batches, the last one partial.

    Yields batches of ``(index, augmentation seed)`` pairs; the permutations and seeds are
    :class:`InfiniteSampler`'s, so a run resumes at any step exactly.
    """

    def __init__(
        self, n: int, batch_size: int, seed: int, start_step: int = 0, drop_last: bool = False
    ) -> None:
        """Create the sampler.

        Args:
            n: Dataset size.
            batch_size: Samples per full batch.
            seed: Seed of the permutations and augmentation seeds.
            start_step: Step (batch) of the stream to start at.
            drop_last: Epochs of ``n // batch_size`` full batches (the rest of each
                permutation is not used that epoch).
        """
        if n < 1 or (drop_last and n < batch_size):
            raise ValueError(f"cannot sample batches of {batch_size} from {n} images")
        self.n = n
        self.batch_size = batch_size
        self.seed = seed
        self.start_step = start_step
        self.batches_per_epoch = n // batch_size if drop_last else -(-n // batch_size)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        step = self.start_step
        while True:
            epoch, batch = divmod(step, self.batches_per_epoch)
            order = np.random.default_rng([self.seed, epoch]).permutation(self.n)
            begin = batch * self.batch_size
            chunk = order[begin : begin + self.batch_size]
            base = epoch * self.n + begin
            yield [(int(i), sample_seed(self.seed, base + j)) for j, i in enumerate(chunk)]
            step += 1


def index_seed(index: int) -> int:
    """The seed of an item loaded by plain index (evaluation order, no sampler seed)."""
    return int(index)


class ImageDataset(Dataset):
    """uint8 images in memory with labels; items are ``(image tensor, label tensor)``.

    Indexed by an int (deterministic transform) or by an ``(index, seed)`` pair from
    :class:`InfiniteSampler`, in which case the transform's random draws are seeded with
    ``seed`` inside a forked RNG (the global torch RNG is left untouched).
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        transform: Transform,
        soft_range: tuple[float, float] | None = None,
    ) -> None:
        """Create the dataset.

        Args:
            images: uint8 (N, H, W) or (N, H, W, 3).
            labels: int64 (N,) class ids or float32 (N, C) multilabel targets; NaN
                entries are label-smoothed (CheXpert LSR).
            transform: Image array -> float tensor (3, S, S).
            soft_range: The uniform range a NaN entry's target is drawn from each time
                its image is loaded (seeded by the item's seed), or None.
        """
        self.images = images
        self.labels = torch.tensor(np.asarray(labels))  # a copy: labels may be a read-only map
        self.transform = transform
        self.soft_range = soft_range
        if soft_range is None and self.labels.is_floating_point() and self.labels.isnan().any():
            raise ValueError("label-smoothed (NaN) targets need their soft_range")

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(item, tuple):
            index, seed = item
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                image = self.transform(self.images[index])
        else:
            index, seed = item, index_seed(item)
            image = self.transform(self.images[index])
        label = self.labels[index]
        if self.soft_range is not None and label.isnan().any():
            low, high = self.soft_range
            draws = np.random.default_rng([seed, 0x150F7]).random(label.shape)
            label = torch.where(label.isnan(), torch.as_tensor(low + (high - low) * draws), label)
            label = label.to(self.labels.dtype)
        return image, label


def train_loader(
    images: np.ndarray,
    labels: np.ndarray,
    pre: Preprocessing,
    scale: tuple[float, float],
    batch_size: int,
    seed: int,
    start: int,
    num_workers: int = 0,
    pin_memory: bool = False,
    sampling: str = "stream",
    rotation: float = 0.0,
    augmentation: str = "crop-flip",
    keras: tuple[bool, float, float, float] = (True, 0.0, 0.0, 0.0),
    soft_range: tuple[float, float] | None = None,
) -> DataLoader:
    """An endless loader of augmented training batches starting at sample ``start``.

    Args:
        images: uint8 training images.
        labels: Training targets (int64 class ids or float32 multilabel rows).
        pre: The model's preprocessing.
        scale: RandomResizedCrop area range.
        batch_size: Samples per step.
        seed: Seed of the sample order and augmentation.
        start: Stream position to start at, ``step * batch_size`` (``epochs`` sampling
            starts at step ``start // batch_size``).
        num_workers: DataLoader workers (0 on small CPU machines).
        pin_memory: Pin host memory (CUDA).
        sampling: "stream" (full batches), "epochs" (partial last batch per epoch) or
            "drop_last" (full batches, ``n // batch_size`` per epoch).
        rotation: RandomRotation degrees of the augmentation (0: none).
        augmentation: The augmentation's name (:func:`train_transform`).
        keras: ``(hflip, shift, shear, zoom)`` of the Keras augmentation.

    Returns:
        A DataLoader whose iterator never ends.
    """
    transform = train_transform(pre, scale, rotation, augmentation, keras)
    dataset = ImageDataset(images, labels, transform, soft_range)
    # DataLoader draws a base seed for workers at every iter(); from its own generator,
    # not from the global RNG, so starting a loader does not shift the dropout stream.
    generator = torch.Generator().manual_seed(seed)
    if sampling in ("epochs", "drop_last"):
        batches = EpochBatchSampler(
            len(dataset), batch_size, seed, start // batch_size, drop_last=sampling == "drop_last"
        )
        return DataLoader(
            dataset,
            batch_sampler=batches,
            num_workers=num_workers,
            pin_memory=pin_memory,
            generator=generator,
        )
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=InfiniteSampler(len(dataset), seed, start),
        num_workers=num_workers,
        pin_memory=pin_memory,
        generator=generator,
        persistent_workers=False,
    )


class EvalSet:
    """A split prepared for evaluation with the model's eval transform, in fixed order."""

    def __init__(
        self,
        images: np.ndarray,
        pre: Preprocessing,
        transform: Callable[[np.ndarray], torch.Tensor] | None = None,
        views: int = 1,
    ) -> None:
        """Create the evaluation set.

        Args:
            images: uint8 images.
            pre: The model's preprocessing.
            transform: Replaces the model's eval transform (e.g. TenCrop's).
            views: Tensors the transform makes of one image (TenCrop: 10), for the
                size of the in-memory cache.
        """
        self.images = images
        self.transform = transform or model_eval_transform(pre)
        per_image = views * 3 * pre.input_size * pre.input_size * 4
        self._cache: torch.Tensor | None = None
        self._cacheable = per_image * len(images) <= _EVAL_CACHE_LIMIT

    def __len__(self) -> int:
        return len(self.images)

    def batches(self, batch_size: int) -> Iterator[torch.Tensor]:
        """Yield the transformed images in order.

        Args:
            batch_size: Images per batch.

        Yields:
            float tensors (B, 3, S, S).
        """
        if self._cacheable and self._cache is None:
            self._cache = torch.stack([self.transform(image) for image in self.images])
        for begin in range(0, len(self.images), batch_size):
            if self._cache is not None:
                yield self._cache[begin : begin + batch_size]
            else:
                chunk = self.images[begin : begin + batch_size]
                yield torch.stack([self.transform(image) for image in chunk])


def inverse_frequency_weights(labels: np.ndarray, num_classes: int, task: str) -> np.ndarray:
    """Loss weights that balance the classes of the training labels.

    Single-label tasks: class ``c`` gets ``(1 / n_c) / mean_k(1 / n_k)``, inverse class
    frequency normalised to mean 1 over classes (cross-entropy's weighted mean divides by
    the summed weights, so only the ratios matter). Multilabel tasks: BCE's ``pos_weight``
    per label, ``n_negative / n_positive``.

    Args:
        labels: Training labels, (N,) class ids or (N, C) 0/1.
        num_classes: Number of classes (labels for multilabel).
        task: Task type.

    Returns:
        float64 array (C,).

    Raises:
        ValueError: When a class (or a label's positive value) never occurs.
    """
    if task == "multilabel":
        positives = labels.sum(axis=0).astype(np.float64)
        if np.any(positives == 0):
            missing = np.flatnonzero(positives == 0).tolist()
            raise ValueError(f"class weighting: label(s) {missing} have no positive example")
        return (len(labels) - positives) / positives
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    if np.any(counts == 0):
        missing = np.flatnonzero(counts == 0).tolist()
        raise ValueError(f"class weighting: class(es) {missing} have no training example")
    inverse = 1.0 / counts
    return inverse / inverse.mean()
