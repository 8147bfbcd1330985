"""Fixtures for the CLI tests: the client tests' scripted gRPC server, and running ``ttdist``."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "client"))

from scripted_generation import scripted  # noqa: E402, F401  (the fixture)
