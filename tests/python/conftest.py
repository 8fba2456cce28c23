"""Shared test settings: `BC_STRESS_SCALE` (default 1) multiplies the randomized and
concurrent tests' work; `make stress` raises it."""

from __future__ import annotations

import os

STRESS_SCALE = max(1, int(os.environ.get("BC_STRESS_SCALE", "1")))
