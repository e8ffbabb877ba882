"""The local stack refuses to start with a clear message when a prerequisite is missing."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from mystocks_gpu.exceptions import ConfigError
from mystocks_gpu.infra.config import StackConfig
from mystocks_gpu.infra.exceptions import StackError
from mystocks_gpu.infra.stack import LocalStack


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stack(tmp_path: Path, **cfg: object) -> LocalStack:
    """A stack in ``tmp_path``; each of its three ports free unless ``cfg`` names it (and any other
    ``StackConfig`` field ``cfg`` gives)."""
    ports = {k: _free_port() for k in ("kafka_port", "controller_port", "redis_port") if k not in cfg}
    return LocalStack(StackConfig(home=str(tmp_path), **ports, **cfg))  # type: ignore[arg-type]


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A loopback port another process (this test's listening socket) holds for the whole test."""
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        yield squatter.getsockname()[1]


def test_port_taken_is_reported(tmp_path: Path, taken_port: int) -> None:
    port = taken_port
    st = _stack(tmp_path, redis_port=port)
    with pytest.raises(StackError, match=f"port 127.0.0.1:{port} is taken by another process"):
        st.start_redis()
    assert {c.name: c.state for c in st.status()}["redis"] == "foreign"
    assert st.down() == []  # never touches a process it did not start


def test_java_missing_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    st = _stack(tmp_path)
    with pytest.raises(StackError, match="Java is missing"):
        st.start_kafka()
    with pytest.raises(StackError, match="redis-server is missing"):
        st.start_redis()


def test_a_failed_up_stops_the_redis_it_started_and_leaves_a_running_one(tmp_path: Path, taken_port: int) -> None:
    """The broker's port is taken: ``up`` fails naming it; the Redis server it started is gone again
    (its pid file and its port), while a Redis server that was running before ``up`` keeps running."""
    port = taken_port
    st = _stack(tmp_path, kafka_port=port)
    with pytest.raises(StackError, match=f"port 127.0.0.1:{port} is taken by another process"):
        st.up()
    assert {c.name: c.state for c in st.status()}["redis"] == "stopped"
    assert st._read_pid("redis") is None
    pid = st.start_redis()  # running before up: a failed up leaves it alone
    try:
        with pytest.raises(StackError, match="is taken by another process"):
            st.up()
        assert st._read_pid("redis") == pid
        assert {c.name: c.state for c in st.status()}["redis"] == "running"
    finally:
        st.down()


def test_a_broker_cpu_the_machine_lacks_is_refused_before_java_is_looked_for(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no Java either: the CPU list is what must be named first
    missing = max(os.sched_getaffinity(0)) + 64
    st = _stack(tmp_path, kafka_cpus=f"0,{missing}")
    with pytest.raises(ConfigError, match=rf"stack.kafka_cpus: CPU\(s\) \[{missing}\] are not available here"):
        st.start_kafka()
    assert not (tmp_path / "kafka").exists()  # nothing downloaded, formatted or started
