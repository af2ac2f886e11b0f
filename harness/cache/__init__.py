"""The one cache service of medxfer.

:mod:`~harness.cache.store` (keys in names and files, locks, re-check, stale
temporaries, atomic writes, events and counts), :mod:`~harness.cache.keys` (the one key
function), :mod:`~harness.cache.codecs` (file formats), :mod:`~harness.cache.atomic`
(the atomic-write primitive); its namespaces: frozen features
(:mod:`harness.features`), derived statistics (:mod:`~harness.cache.arrays`) and
training runs (:mod:`~harness.cache.runs`).
"""
