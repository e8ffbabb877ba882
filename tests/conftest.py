"""Shared fixtures. Integration tests get the real local stack (Kafka + Redis), started once per
session; if it cannot start, they fail with the reason (they never skip)."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from mystocks_gpu.infra.config import Settings, load_settings
from mystocks_gpu.infra.stack import LocalStack

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def settings() -> Settings:
    """Settings from the environment (defaults: the loopback stack)."""
    return load_settings(environ={k: v for k, v in os.environ.items() if k.startswith("MYSTOCKS_")})


@pytest.fixture(scope="session")
def stack(settings: Settings) -> Iterator[LocalStack]:
    """The running local stack; started here if `make test` did not start it already."""
    st = LocalStack(settings.stack)
    was_running = all(c.state == "running" for c in st.status())
    st.up()  # raises StackError (test error, not skip) when it cannot start
    from mystocks_gpu.topics import all_specs
    from mystocks_gpu.topics.admin import TopicAdmin

    TopicAdmin(settings.kafka).create(all_specs())  # the catalog, as `make demo` / `topics create` leave it
    yield st
    if not was_running:
        st.down()


@pytest.fixture()
def unique() -> str:
    """A short unique suffix for topic and group names."""
    return uuid.uuid4().hex[:10]


def run_cli(*args: str, timeout: float = 120, env: dict[str, str] | None = None,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``mystocks-gpu ARGS`` in a subprocess and capture its output."""
    return subprocess.run([sys.executable, "-m", "mystocks_gpu.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env={**os.environ, **(env or {})}, input=input)
