"""Reading Keras ``.h5`` weight files with h5py: no TensorFlow, no Keras, no pickle.

Keras' legacy HDF5 layout (``save_weights`` and ``model.save`` in Keras 2, kept by
keras-team/keras@32a74e04be9108ddfa1076d6d4e9dc5b1cdc7b5e:keras/src/legacy/saving/legacy_h5_format.py):
the weights group (the file's root for ``save_weights``, ``model_weights`` for a full
model) has the attributes ``layer_names`` (every layer, in model order, weightless ones
included), ``backend`` and ``keras_version``; each layer has a group named like the
layer, whose attribute ``weight_names`` lists its weights (``conv1_conv/kernel:0``) and
whose datasets of those names (paths relative to the layer group) hold the values.

:func:`read_keras_h5` returns one flat dict of tensors keyed ``<layer>/<weight>``
(``conv1_conv/kernel``, ``conv2_block1_1_bn/moving_mean``): the weight name's last
component without its ``:0`` suffix. Values keep Keras' layout (kernels HWIO); the
converters in :mod:`harness.zoo.converters.keras` map them to PyTorch.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from harness.zoo.errors import CheckpointError

if TYPE_CHECKING:
    import torch

KERAS_SUFFIXES = (".h5", ".hdf5")


def _text(value: object) -> str:
    return value.decode("utf8") if isinstance(value, bytes) else str(value)


def _names(group: object, attr: str) -> list[str]:
    """A list attribute, also when Keras split it into ``<attr>0``, ``<attr>1``, ... (long lists)."""
    attrs = group.attrs  # type: ignore[attr-defined]
    if attr in attrs:
        return [_text(v) for v in attrs[attr]]
    names: list[str] = []
    chunk = 0
    while f"{attr}{chunk}" in attrs:
        names.extend(_text(v) for v in attrs[f"{attr}{chunk}"])
        chunk += 1
    return names


def weight_key(layer: str, weight_name: str) -> str:
    """``<layer>/<leaf>`` for a Keras weight name (``conv1_conv/kernel:0`` -> ``conv1_conv/kernel``)."""
    leaf = weight_name.rsplit("/", 1)[-1].split(":", 1)[0]
    return f"{layer}/{leaf}"


def read_keras_h5(path: Path, where: str) -> dict[str, torch.Tensor]:
    """Read every layer's weights of a Keras legacy ``.h5`` file as float32 tensors.

    Args:
        path: the ``.h5`` file.
        where: the model and file, for error messages.

    Returns:
        ``{"<layer>/<weight>": tensor}`` in the file's layer order, Keras' layouts kept.

    Raises:
        CheckpointError: When h5py is missing, the file is not a Keras weights file, or
            a layer's ``weight_names`` names a dataset the file lacks.
    """
    try:
        import h5py
    except ImportError as exc:
        raise CheckpointError(
            f"{where}: reading a Keras .h5 file needs h5py (pip install 'medxfer[hdf5]')"
        ) from exc
    import numpy as np
    import torch

    out: dict[str, torch.Tensor] = {}
    try:
        with h5py.File(path, "r") as handle:
            group = handle.get("model_weights", handle)
            layer_names = _names(group, "layer_names")
            if not layer_names:
                raise CheckpointError(
                    f"{where}: not a Keras weights file (no 'layer_names' attribute in "
                    f"{group.name!r})"
                )
            for layer in layer_names:
                if layer not in group:
                    raise CheckpointError(f"{where}: layer {layer!r} is listed but has no group")
                layer_group = group[layer]
                for name in _names(layer_group, "weight_names"):
                    if name not in layer_group:
                        raise CheckpointError(
                            f"{where}: layer {layer!r} lists weight {name!r}, which the file lacks"
                        )
                    key = weight_key(layer, name)
                    if key in out:
                        raise CheckpointError(f"{where}: weight {key!r} appears twice")
                    array = np.asarray(layer_group[name][()], dtype=np.float32)
                    out[key] = torch.from_numpy(np.ascontiguousarray(array))
    except CheckpointError:
        raise
    except (OSError, KeyError, ValueError) as exc:
        raise CheckpointError(f"{where}: cannot read Keras .h5 file: {exc}") from exc
    if not out:
        raise CheckpointError(f"{where}: the Keras .h5 file holds no weights")
    return out
