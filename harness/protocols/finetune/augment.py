"""The peers' training augmentations other than RandomResizedCrop + flip.

:func:`feature_reuse_transform` (feature-reuse's torchvision pipeline) and
:func:`keras_transform` (the Keras peers' ``ImageDataGenerator``), selected by
``FinetuneConfig.augmentation`` through :func:`harness.protocols.finetune.data.train_transform`;
:func:`tf_resize_transform`, VTAB's one transform for training and evaluation (the
preprocessing interpolation :data:`TF_BILINEAR`).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torchvision import transforms as v1
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms import functional as F

from harness.config.cards import Preprocessing
from harness.data.pil_resize import WidthFirstResize, WidthFirstResizedCrop
from harness.data.resize_tf import tf1_bilinear_resize
from harness.data.transforms import normalise, to_pil_rgb
from harness.protocols.finetune.keras import keras_augment

Transform = Callable[[np.ndarray], torch.Tensor]

#: The preprocessing ``interpolation`` of TF1's ``tf.image.resize`` (bilinear without
#: half-pixel centres or antialiasing) to a square ``input_size``, no crop.
TF_BILINEAR = "tf-bilinear"


def torchvision_interpolation(pre: Preprocessing, transform: str) -> InterpolationMode:
    """The preprocessing's interpolation as torchvision's, for a transform that needs it.

    Args:
        pre: The preprocessing.
        transform: What asks (named in the error), e.g. "augmentation 'crop-flip'".

    Raises:
        ValueError: For :data:`TF_BILINEAR`, which only VTAB's square resize implements.
    """
    if pre.interpolation == TF_BILINEAR:
        raise ValueError(
            f"interpolation {TF_BILINEAR!r} (VTAB's TF1 resize, the vtab preset's) has no "
            f"torchvision kernel: {transform} needs nearest, bilinear or bicubic; with "
            "tf-bilinear use augmentation 'none' and no TenCrop, as the vtab preset does"
        )
    return InterpolationMode(pre.interpolation)


def square_resize(pre: Preprocessing, transform: str) -> WidthFirstResize:
    """params.json's ``Resize`` of ChrisMats' studies: a square of ``floor(input_size /
    crop_pct)`` (256 for 224 at 0.875) in the preprocessing's interpolation, width first
    (Pillow-independent like the eval transform's).

    Args:
        pre: The preprocessing.
        transform: What asks (named in an interpolation error).
    """
    side = math.floor(pre.input_size / pre.crop_pct)
    return WidthFirstResize(v1.Resize((side, side), torchvision_interpolation(pre, transform)))


def feature_reuse_transform(
    pre: Preprocessing,
    scale: tuple[float, float],
    jitter_p: float = 0.2,
    grayscale_p: float = 0.2,
) -> Transform:
    """feature-reuse's training augmentation (params.json ``train_transforms``).

    ChrisMats/feature-reuse@736d31b:defaults/bases.py (``get_trans_list``) in its order:
    Resize to a square of ``floor(input_size / crop_pct)`` (256 for 224 at 0.875),
    RandomResizedCrop(input_size, ``scale``, bilinear) with the peer's (0.8, 1.2), vertical
    and horizontal flips (p 0.5 each), ColorJitter(0.2, 0.2, 0.1, 0.1) applied with p 0.2,
    RandomGrayscale(0.2), then normalise. medical_transformers@ecd460a's params.json
    applies the jitter with p 0.8 and no RandomGrayscale (``grayscale_p=0``: the step is
    left out, drawing nothing).

    Args:
        pre: The preprocessing (size, crop_pct, interpolation of the resize, mean/std).
        scale: RandomResizedCrop's area range.
        jitter_p: Probability of the colour jitter.
        grayscale_p: Probability of RandomGrayscale (0: no such step).

    Returns:
        Image array -> float tensor (3, S, S), drawing from torch's global RNG.
    """
    transform = v1.Compose(
        [
            square_resize(pre, "augmentation 'feature-reuse'"),
            WidthFirstResizedCrop(
                v1.RandomResizedCrop(
                    pre.input_size, scale=scale, interpolation=InterpolationMode.BILINEAR
                )
            ),
            v1.RandomVerticalFlip(0.5),
            v1.RandomHorizontalFlip(0.5),
            v1.RandomApply([v1.ColorJitter(0.2, 0.2, 0.1, 0.1)], p=jitter_p),
            *([v1.RandomGrayscale(grayscale_p)] if grayscale_p > 0 else []),
            v1.ToTensor(),
        ]
    )

    def apply(image: np.ndarray) -> torch.Tensor:
        return normalise(transform(to_pil_rgb(image)), pre)

    return apply


def transferability_transform(
    pre: Preprocessing, scale: tuple[float, float], rotation: float
) -> Transform:
    """DovileDo/transferability-in-medical-imaging's training augmentation.

    DovileDo/transferability-in-medical-imaging@7e308c4:src/fine-tuning.py (``load_data``),
    a ``torchvision.transforms.v2`` pipeline on the image converted to RGB, in its order:
    to a float tensor in [0, 1], RandomHorizontalFlip(0.5), RandomResizedCrop(input_size,
    ``scale``, bilinear, antialias), RandomRotation((0, ``rotation``)) (one way only,
    nearest, no expansion, fill 0), RandomAdjustSharpness(2), RandomAutocontrast() and
    RandomEqualize() (p 0.5 each; equalize bins the float image to uint8 levels), then
    normalise. The study's crop interpolation is torchvision's default (bilinear) whatever
    the eval transform uses.

    Args:
        pre: The preprocessing (input size, mean/std, histogram normalisation).
        scale: RandomResizedCrop's area range.
        rotation: Upper end of the rotation range in degrees (0: no rotation step).

    Returns:
        Image array -> float tensor (3, S, S), drawing from torch's global RNG.
    """
    transform = v2.Compose(
        [
            v2.RandomHorizontalFlip(0.5),
            v2.RandomResizedCrop(
                pre.input_size,
                scale=scale,
                interpolation=InterpolationMode.BILINEAR,
                antialias=True,
            ),
            *([v2.RandomRotation((0.0, rotation))] if rotation else []),
            v2.RandomAdjustSharpness(sharpness_factor=2.0),
            v2.RandomAutocontrast(),
            v2.RandomEqualize(),
        ]
    )

    def apply(image: np.ndarray) -> torch.Tensor:
        # ToTensor's own division by 255: equalize bins the float image to uint8 levels,
        # where another rounding of x / 255 can move a pixel to the next level.
        return normalise(transform(F.to_tensor(to_pil_rgb(image))), pre)

    return apply


def keras_transform(
    pre: Preprocessing, rotation: float, hflip: bool, shift: float, shear: float, zoom: float
) -> Transform:
    """The Keras peers' training augmentation (``ImageDataGenerator``).

    ``flow_from_dataframe`` loads every image at ``target_size`` with nearest-neighbour
    resizing (the aspect ratio is not kept), then ``random_transform`` applies the random
    affine and flip (:func:`harness.protocols.finetune.keras.keras_augment`), then the
    model's normalisation (the peers' ``preprocess_input``).

    Args:
        pre: The preprocessing (input size, mean/std).
        rotation: ``rotation_range`` (degrees).
        hflip: ``horizontal_flip``.
        shift: Width and height shift range.
        shear: ``shear_range`` (degrees).
        zoom: ``zoom_range``.

    Returns:
        Image array -> float tensor (3, S, S), drawing from torch's global RNG.
    """

    def apply(image: np.ndarray) -> torch.Tensor:
        size = [pre.input_size, pre.input_size]
        resized = F.resize(to_pil_rgb(image), size, InterpolationMode.NEAREST)
        x = keras_augment(F.to_tensor(resized), rotation, shift, shear, zoom, hflip)
        return normalise(x, pre)

    return apply


def tf_resize_transform(pre: Preprocessing) -> Transform:
    """VTAB's preprocessing: TF1 bilinear resize to a square, ``/ 255``, then normalise.

    google-research/task_adaptation@d7630d3:task_adaptation/data_loader.py
    (``preprocess_fn``): ``tf.image.resize(image, [224, 224])`` on the uint8 image (the
    ``tensorflow.compat.v1`` resize: :func:`~harness.data.resize_tf.tf1_bilinear_resize`), cast to float, divided
    by 255 (``input_range`` [0, 1], the TF-Hub image-module convention) and, here, the
    model card's mean and std, the torch model's own input convention. No crop, no flip,
    no other augmentation; the same for training and evaluation.

    Args:
        pre: The preprocessing (input size, mean/std, histogram normalisation).

    Returns:
        Image array (H, W) or (H, W, 3) uint8 -> float tensor (3, S, S).
    """

    def apply(image: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(tf1_bilinear_resize(image, pre.input_size))
        x = x.permute(2, 0, 1) if x.ndim == 3 else x.unsqueeze(0)
        x = x.expand(3, -1, -1) if x.shape[0] == 1 else x
        return normalise(x / 255.0, pre)

    return apply
