"""`selftune analyze` (registered here; built out in the analysis module)."""

from __future__ import annotations

from typing import Any


def register(sub: Any) -> None:  # filled in by the analysis work
    return None
