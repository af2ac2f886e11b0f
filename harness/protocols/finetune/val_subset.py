"""A validation loader that shuffles and drops its last partial batch, as
ChrisMats/medical_transformers@ecd460a's params.json sets ``valloader`` (``shuffle: true,
drop_last: true``): each validation scores a fresh random ``batch * (n // batch)`` of the
validation images.

Predictions in evaluation mode do not depend on the batch an image is in, so the subset is
taken from the predictions of the whole split: the same numbers as predicting the subset.
"""

from __future__ import annotations

import numpy as np


class DroppedLastBatch:
    """The indices each validation keeps, drawn from a seeded stream (one per run)."""

    def __init__(self, n: int, batch_size: int, seed: int) -> None:
        """Set up the draws.

        Args:
            n: Validation images.
            batch_size: The loader's batch size.
            seed: Seed of the stream of permutations.

        Raises:
            ValueError: When fewer than ``batch_size`` images leave no full batch.
        """
        if n < batch_size:
            raise ValueError(
                f"val_drop_last: {n} validation images make no full batch of {batch_size}"
            )
        self.keep = batch_size * (n // batch_size)
        self.n = n
        self.rng = np.random.default_rng(seed)

    def next_indices(self) -> np.ndarray:
        """The images the next validation scores, in the loader's shuffled order."""
        return self.rng.permutation(self.n)[: self.keep]
