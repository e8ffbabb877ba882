"""Every test here runs against the real broker and Redis (the session's local stack)."""

from __future__ import annotations

import pytest

from mystocks_gpu.infra.stack import LocalStack


@pytest.fixture(autouse=True)
def _needs_stack(stack: LocalStack) -> None:
    """Start (or reuse) the stack before each integration test; failure to start fails the test."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/integration/" in str(item.fspath):
            item.add_marker(pytest.mark.integration)
