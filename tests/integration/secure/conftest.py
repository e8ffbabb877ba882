"""The secure-stack tests: their own private SECURE Kafka + Redis (``secure_stack``), not the plain one."""

from __future__ import annotations

from typing import Any

import pytest


@pytest.fixture(autouse=True)
def _needs_stack(secure_stack: Any) -> None:
    """Start (once) the secure stack before each test here (the plain stack is not needed)."""
