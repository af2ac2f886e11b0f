"""Benchmark protocols: each module has a config dataclass, a VERSION and ``run()``."""
