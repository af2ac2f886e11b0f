"""Analyses of representations: similarity between models, transferability estimates.

Pure functions on NumPy arrays (no cache, no cards, no torch):

- :mod:`harness.analyses.similarity`: linear and RBF CKA, CCA / SVCCA, prediction
  agreement and its chance level.
- :mod:`harness.analyses.transferability`: LogME, LEEP, N-LEEP and the Fréchet distance
  between two feature distributions.
- :mod:`harness.analyses.ranking`: Spearman / Kendall rank correlations, and the rank
  correlation of each transferability estimate with measured linear-probe accuracies
  over a suite's records.

The protocols that run them on benchmark cases are ``similarity``, ``layerwise`` and
``transferability`` in :mod:`harness.protocols`.
"""
