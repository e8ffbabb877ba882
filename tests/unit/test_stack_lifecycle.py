"""The local stack's process and cache handling without a broker: `stack down` signals only
processes that are still ours, the Kafka jar cache is verified against its manifest (and resolved
again when it does not match), waiting for the broker prints no client noise, Java versions."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from mystocks_gpu.infra.config import StackConfig
from mystocks_gpu.infra.exceptions import StackError
from mystocks_gpu.infra.stack import JAR_MANIFEST, LocalStack, java_major, process_start_time
from mystocks_gpu.infra.stack_process import ManagedServer
from tests.conftest import run_cli, wait_until


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stack(home: Path, **kw: object) -> LocalStack:
    cfg = {"home": str(home / "stack"), "kafka_port": _free_port(), "controller_port": _free_port(),
           "redis_port": _free_port(), "cache_dir": str(home / "cache"), **kw}
    return LocalStack(StackConfig(**cfg))  # type: ignore[arg-type]


def _alive(p: subprocess.Popen[bytes]) -> bool:
    return p.poll() is None


@pytest.fixture()
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a test starts; each is killed (by its own pid) at the end."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
        p.wait(10)


def _spawn(procs: list[subprocess.Popen[bytes]], *argv: str) -> subprocess.Popen[bytes]:
    p = subprocess.Popen(list(argv), start_new_session=True, stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    procs.append(p)
    want = [a.encode() for a in argv]

    def exec_done() -> bool:  # the child has exec'd argv (before that /proc shows the forking parent's command line)
        try:
            return Path(f"/proc/{p.pid}/cmdline").read_bytes().split(b"\0")[:len(want)] == want
        except OSError:
            return False

    wait_until(exec_done, 10, f"the process to appear in /proc running {argv[0]}")
    return p


# ---- stack down signals only our processes -------------------------------------------------


def test_down_leaves_an_unrelated_process_with_a_reused_pid_alone(tmp_path: Path, procs: list) -> None:
    st = _stack(tmp_path)
    st.home.mkdir(parents=True)
    other = _spawn(procs, "sleep", "300")  # some process that got the pid after a reboot
    (st.home / "kafka.pid").write_text(str(other.pid))  # old format: pid only
    (st.home / "redis.pid").write_text(f"{other.pid} {process_start_time(other.pid)}")
    assert st.pid("kafka") is None and st.pid("redis") is None
    assert {c.name: c.state for c in st.status()} == {"kafka": "stopped", "redis": "stopped"}
    assert st.down() == []
    assert _alive(other)
    assert not (st.home / "kafka.pid").exists() and not (st.home / "redis.pid").exists()  # stale files gone


def test_cli_stack_down_leaves_an_unrelated_process_alone(tmp_path: Path, procs: list) -> None:
    st = _stack(tmp_path)
    st.home.mkdir(parents=True)
    other = _spawn(procs, "sleep", "300")
    (st.home / "kafka.pid").write_text(str(other.pid))
    (st.home / "redis.pid").write_text(str(other.pid))
    r = run_cli("stack", "down", env={"MYSTOCKS_STACK__HOME": str(st.home),
                                      "MYSTOCKS_STACK__REDIS_PORT": str(st.cfg.redis_port)})
    assert r.returncode == 0, r.stderr
    assert "stopped: nothing" in r.stdout
    assert _alive(other)


def _fake_kafka(procs: list, st: LocalStack) -> subprocess.Popen[bytes]:
    """A process whose command line is the one `stack up` gives the broker."""
    props = st.kafka_dir / "server.properties"
    return _spawn(procs, sys.executable, "-c", "import time; time.sleep(300)", "kafka.Kafka", str(props))


def test_down_stops_our_process(tmp_path: Path, procs: list) -> None:
    st = _stack(tmp_path)
    st.home.mkdir(parents=True)
    ours = _fake_kafka(procs, st)
    st._write_pid("kafka", ours.pid)
    assert st.pid("kafka") == ours.pid
    assert st.down() == ["kafka"]
    assert ours.wait(10) == -signal.SIGTERM


def _broker_data(st: LocalStack) -> Path:
    """A broker log dir as a formatted, used broker leaves it (meta.properties and a topic's partition)."""
    data = st.kafka_dir / "data"
    (data / "t.in.x-0").mkdir(parents=True)
    (data / "meta.properties").write_text("cluster.id=abc\nnode.id=1\nversion=1\n")
    (data / "t.in.x-0" / "00000000000000000000.log").write_bytes(b"\0" * 64)
    return data


def _stack_with_broker_data(tmp_path: Path, procs: list) -> tuple[LocalStack, Path, subprocess.Popen[bytes]]:
    """A stack whose (fake) broker runs over a used log dir: the stack, the log dir, the broker."""
    st = _stack(tmp_path)
    st.home.mkdir(parents=True)
    data = _broker_data(st)
    ours = _fake_kafka(procs, st)
    st._write_pid("kafka", ours.pid)
    return st, data, ours


def test_cli_stack_down_wipe_stops_the_broker_then_deletes_its_data(tmp_path: Path, procs: list) -> None:
    st, data, ours = _stack_with_broker_data(tmp_path, procs)
    r = run_cli("stack", "down", "--wipe", env={"MYSTOCKS_STACK__HOME": str(st.home),
                                                "MYSTOCKS_STACK__REDIS_PORT": str(st.cfg.redis_port)})
    assert r.returncode == 0, r.stderr
    assert "stopped: kafka" in r.stdout and f"wiped: the broker data in {data}" in r.stdout
    assert ours.wait(10) == -signal.SIGTERM
    assert not data.exists() and st.kafka_dir.exists()  # the log dir only: logs and properties stay


def test_wipe_refuses_while_the_broker_runs(tmp_path: Path, procs: list) -> None:
    st, data, ours = _stack_with_broker_data(tmp_path, procs)
    with pytest.raises(StackError, match="broker is running"):
        st.wipe_kafka()
    assert (data / "meta.properties").exists() and _alive(ours)


def test_wipe_goes_with_down_only(tmp_path: Path) -> None:
    r = run_cli("stack", "status", "--wipe", env={"MYSTOCKS_STACK__HOME": str(tmp_path / "stack")})
    assert r.returncode != 0
    assert "--wipe goes with `stack down` only" in r.stderr


def test_down_leaves_a_same_command_process_with_another_start_time_alone(tmp_path: Path, procs: list) -> None:
    st = _stack(tmp_path)
    st.home.mkdir(parents=True)
    lookalike = _fake_kafka(procs, st)
    started = process_start_time(lookalike.pid)
    assert started is not None
    (st.home / "kafka.pid").write_text(f"{lookalike.pid} {started - 1}")  # the recorded process was another one
    assert st.down() == []
    assert _alive(lookalike)


def test_down_leaves_another_stacks_kafka_alone(tmp_path: Path, procs: list) -> None:
    mine, theirs = _stack(tmp_path / "mine"), _stack(tmp_path / "theirs")
    mine.home.mkdir(parents=True)
    other = _fake_kafka(procs, theirs)  # another checkout's broker
    (mine.home / "kafka.pid").write_text(str(other.pid))
    assert mine.down() == []
    assert _alive(other)


# ---- the Kafka jar cache -------------------------------------------------------------------

FAKE_JARS = {"kafka_2.13-4.1.1.jar": b"broker" * 1000, "kafka-clients-4.1.1.jar": b"clients" * 500,
             "slf4j-api-2.0.17.jar": b"slf4j"}


@pytest.fixture()
def fake_mvn(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A `mvn` on PATH that 'resolves' FAKE_JARS into -DoutputDirectory and logs each call."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    src = tmp_path / "repo"
    src.mkdir()
    for name, data in FAKE_JARS.items():
        (src / name).write_bytes(data)
    log = tmp_path / "mvn.log"
    mvn = bin_dir / "mvn"
    mvn.write_text(f"#!/bin/bash\necho \"$*\" >> {log}\n"
                   "for a in \"$@\"; do case $a in -DoutputDirectory=*) out=${a#-DoutputDirectory=};; esac; done\n"
                   f"mkdir -p \"$out\" && cp {src}/*.jar \"$out\"/\n")
    mvn.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    return log


def _calls(log: Path) -> int:
    return len(log.read_text().splitlines()) if log.exists() else 0


def test_jar_cache_is_resolved_once_then_verified(tmp_path: Path, fake_mvn: Path) -> None:
    st = _stack(tmp_path)
    libs = st.fetch_kafka()
    assert _calls(fake_mvn) == 1
    assert {p.name for p in libs.glob("*.jar")} == set(FAKE_JARS)
    manifest = dict(ln.split("  ")[::-1] for ln in (libs / JAR_MANIFEST).read_text().splitlines())
    assert manifest == {n: hashlib.sha1(d).hexdigest() for n, d in FAKE_JARS.items()}
    assert st.jar_problem() is None
    st.fetch_kafka()
    assert _calls(fake_mvn) == 1  # verified, not resolved again


@pytest.mark.parametrize("damage", ["truncate", "delete", "extra", "flip", "no_manifest"])
def test_damaged_jar_cache_is_resolved_again(tmp_path: Path, fake_mvn: Path, damage: str) -> None:
    st = _stack(tmp_path)
    libs = st.fetch_kafka()
    jar = libs / "kafka-clients-4.1.1.jar"
    if damage == "truncate":  # an interrupted copy
        jar.write_bytes(jar.read_bytes()[:100])
    elif damage == "delete":
        jar.unlink()
    elif damage == "extra":  # a stale jar of another version would join the classpath
        (libs / "kafka-clients-3.9.0.jar").write_bytes(b"old")
    elif damage == "flip":  # same size, different bytes
        data = bytearray(jar.read_bytes())
        data[10] ^= 0xFF
        jar.write_bytes(bytes(data))
    else:
        (libs / JAR_MANIFEST).unlink()
    assert st.jar_problem() is not None
    st.fetch_kafka()
    assert _calls(fake_mvn) == 2
    assert st.jar_problem() is None
    assert {p.name: p.read_bytes() for p in libs.glob("*.jar")} == FAKE_JARS


def test_old_completion_marker_is_not_trusted(tmp_path: Path, fake_mvn: Path) -> None:
    # the cache layout before the manifest: a `.complete` marker next to a partial set of jars
    st = _stack(tmp_path)
    st.libs.mkdir(parents=True)
    (st.libs / ".complete").write_text("4.1.1")
    (st.libs / "kafka_2.13-4.1.1.jar").write_bytes(b"brok")
    st.fetch_kafka()
    assert _calls(fake_mvn) == 1
    assert {p.name: p.read_bytes() for p in st.libs.glob("*.jar")} == FAKE_JARS


def test_failed_resolve_keeps_no_half_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "mvn").write_text("#!/bin/bash\necho 'Could not transfer artifact' >&2\nexit 1\n")
    (bin_dir / "mvn").chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    st = _stack(tmp_path)
    with pytest.raises(StackError, match="(?s)Maven could not resolve Kafka 4.1.1 .*Could not transfer artifact"):
        st.fetch_kafka()
    assert not st.libs.exists() and not list(st.cache.glob("libs.*"))


# ---- quiet wait, Java ----------------------------------------------------------------------


@pytest.mark.parametrize("listening", [False, True])
def test_waiting_for_the_broker_prints_no_client_noise(tmp_path: Path, procs: list, listening: bool,
                                                      capfd: pytest.CaptureFixture[str]) -> None:
    # a "broker" that exits after a while without ever answering: first with its port closed
    # (connection refused), then with a port that accepts and drops connections (disconnects)
    st = _stack(tmp_path, startup_timeout_s=30.0)
    st.kafka_dir.mkdir(parents=True)
    stop = threading.Event()
    with socket.socket() as lsock:
        if listening:
            lsock.bind(("127.0.0.1", st.cfg.kafka_port))
            lsock.listen()
            lsock.settimeout(0.2)

            def drop() -> None:
                while not stop.is_set():
                    try:
                        lsock.accept()[0].close()
                    except OSError:
                        pass

            threading.Thread(target=drop, daemon=True).start()
        fake = _spawn(procs, "sleep", "5")
        try:
            with pytest.raises(StackError, match="Kafka exited during startup"):
                st._wait_kafka(fake.pid)
        finally:
            stop.set()
    err = capfd.readouterr().err
    assert "%3|" not in err and "FAIL" not in err and "Connection refused" not in err, err


@pytest.mark.parametrize("out, major", [
    ('openjdk version "17.0.15" 2025-04-15', 17), ('openjdk version "21" 2023-09-19', 21),
    ('java version "1.8.0_292"', 8), ('openjdk version "11.0.22" 2024-01-16', 11),
    ('openjdk version "25-ea" 2025-09-16', 25), ("garbage", 0),
])
def test_java_major(out: str, major: int) -> None:
    assert java_major(out) == major


@pytest.mark.parametrize("version, msg", [("1.8.0_292", "Java 8 found"), ("11.0.22", "Java 11 found"),
                                          ("weird", "a Java of unknown version found")])
def test_old_java_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, version: str, msg: str) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "java").write_text(f"#!/bin/bash\necho 'openjdk version \"{version}\"' >&2\n")
    (bin_dir / "java").chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    with pytest.raises(StackError, match=f"{msg} at .*; Kafka 4 needs Java 17\\+"):
        _stack(tmp_path).java()


def _properties(text: str) -> dict[str, list[str]]:
    """Every ``key=value`` line of a Java properties file, the values of a key in file order."""
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value)
    return out


def test_broker_properties_are_the_shared_settings_then_the_plaintext_listeners(tmp_path: Path) -> None:
    st = _stack(tmp_path)
    st.kafka_dir.mkdir(parents=True)
    text = st._server_properties().read_text()
    props = _properties(text)
    assert all(len(v) == 1 for v in props.values()), {k: v for k, v in props.items() if len(v) > 1}
    port, cport = st.cfg.kafka_port, st.cfg.controller_port
    assert props["listeners"] == [f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{cport}"]
    assert props["controller.quorum.voters"] == [f"1@127.0.0.1:{cport}"]
    assert props["log.dirs"] == [str(st.kafka_dir / "data")]
    # settings of the shared file reach the plain broker (the secure one: test_secure_stack_parts)
    assert props["log.cleaner.dedupe.buffer.size"] == ["16777216"] and props["auto.create.topics.enable"] == ["false"]
    assert re.search(r"@[A-Z_]+@", text) is None  # every placeholder filled


def test_a_servers_log_over_the_limit_moves_aside_when_it_starts(tmp_path: Path) -> None:
    """Servers append their output to ``<name>.log`` across restarts (the broker's grew to 500 MB in a
    day of benchmarks): at start, a log over 64 MiB moves to ``<name>.log.1`` and a smaller one is
    appended to."""
    srv = ManagedServer("demo", tmp_path, "never-matches", "127.0.0.1", _free_port())
    srv.log.parent.mkdir(parents=True)
    big = (64 << 20) + 1
    with open(srv.log, "wb") as f:
        f.write(b"old run\n")
        f.truncate(big)
    srv.spawn(["sh", "-c", "echo started"])
    wait_until(lambda: srv.log.read_bytes() == b"started\n", 30, "the new run's line alone in the log")
    rotated = srv.log.with_name("demo.log.1")
    assert rotated.stat().st_size == big and rotated.read_bytes()[:8] == b"old run\n"
    srv.spawn(["sh", "-c", "echo again"])  # under the limit: appended, the rotated log untouched
    wait_until(lambda: srv.log.read_bytes() == b"started\nagain\n", 30, "the second run appended")
    assert rotated.stat().st_size == big


@pytest.mark.parametrize(("young", "want"), [(640, ["-Xmx1024m", "-Xms1024m", "-Xmn640m"]), (0, ["-Xmx1024m", "-Xms256m"])])
def test_broker_young_generation_is_fixed_by_the_setting(tmp_path: Path, young: int, want: list[str]) -> None:
    """``stack.kafka_young_mb``: the broker's young generation (``-Xmn``) in a heap committed whole;
    0 leaves both to G1 (the heap starting at 256 MB). Only the broker gets it, not the tools."""
    st = _stack(tmp_path, kafka_young_mb=young)
    cmd = st._java_cmd("kafka.Kafka", "server.properties", heap_mb=st.cfg.kafka_heap_mb, young_mb=st.cfg.kafka_young_mb)
    sizes = [a for a in cmd if re.fullmatch(r"-Xm[nsx]\d+m", a)]
    assert sizes == want
    tool = st._java_cmd("kafka.tools.StorageTool", "format")
    assert not any(a.startswith("-Xmn") for a in tool)
