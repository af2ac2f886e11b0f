"""Run ids: one per pytest session, shared by its xdist workers through the environment."""

from __future__ import annotations

import os
import secrets
from datetime import UTC, datetime

RUN_ID_ENV = "MEDXFER_RUN_ID"


def new_run_id() -> str:
    """Return a new run id: a compact UTC timestamp and a short random suffix.

    Returns:
        e.g. ``20260509T073525Z-3f9a1c``; sorts by creation time.
    """
    return f"{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}-{secrets.token_hex(3)}"


def session_run_id() -> str:
    """Return the run id shared by every case of one pytest session (and its xdist workers)."""
    if RUN_ID_ENV not in os.environ:
        os.environ[RUN_ID_ENV] = new_run_id()
    return os.environ[RUN_ID_ENV]
