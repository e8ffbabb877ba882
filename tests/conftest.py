"""Shared fixtures. Integration tests get the real local stack (Kafka + Redis), started once per
session; if it cannot start, they fail with the reason (they never skip).

By default (``--stack=own``) a test run uses a PRIVATE stack: free ports and its own home
(``.stack/test-<pid>``), chosen when the session starts and exported as ``MYSTOCKS_*`` variables
so the ``settings`` fixture, ``load_settings()`` and every CLI/worker subprocess a test starts
follow them. The run starts that stack when the first test needs it and stops it at the end, so
two checkouts can run ``make test`` at once and a stack started by ``make demo`` (``.stack``,
default ports) is never touched. Private stacks left behind by a killed run are stopped by the
next one. ``--stack=env`` instead uses the stack the ``MYSTOCKS_*`` settings describe (started
if needed, stopped at the end only if this run started it): quicker when iterating.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mystocks_gpu.exceptions import ConfigError
from mystocks_gpu.infra.config import Settings, StackConfig, load_settings
from mystocks_gpu.infra.stack import LocalStack, process_start_time

ROOT = Path(__file__).resolve().parents[1]
STACK_HOMES = ROOT / ".stack"
SESSION_FILE = "session.json"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--stack", choices=("own", "env"), default="own",
                     help="own: a private Kafka + Redis on free ports for this run (default); "
                          "env: the stack the MYSTOCKS_* settings describe")


def _env_settings() -> Settings:
    return load_settings(environ={k: v for k, v in os.environ.items() if k.startswith("MYSTOCKS_")})


def _free_ports(host: str, n: int, exclude: Iterable[int] = ()) -> list[int]:
    """``n`` distinct ports free on ``host`` now, below the ephemeral range (so client
    connections made before the stack binds them cannot take them as source ports), none of
    ``exclude`` (ports reserved but not bound yet, e.g. the private plain stack's)."""
    low = 32768
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        pass
    rng = random.Random()  # a different draw per run: concurrent runs rarely try the same ports
    taken = set(exclude)
    ports: list[int] = []
    while len(ports) < n:
        port = rng.randrange(20000, max(low, 21000))
        if port in ports or port in taken:
            continue
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, port))
            except OSError:
                continue
        ports.append(port)
    return ports


def private_stack_env(home: Path, host: str = "127.0.0.1") -> dict[str, str]:
    """``MYSTOCKS_*`` variables of a private stack in ``home`` on free ports (the optional servers'
    too: PostgreSQL, Connect, Prometheus), with the client settings (Kafka bootstrap, Redis URL)
    derived from them."""
    kafka, controller, redis, postgres, connect, prometheus = _free_ports(host, 6)
    return {
        "MYSTOCKS_SERVICES__POSTGRES_PORT": str(postgres),
        "MYSTOCKS_SERVICES__CONNECT_PORT": str(connect),
        "MYSTOCKS_SERVICES__PROMETHEUS_PORT": str(prometheus),
        "MYSTOCKS_STACK__HOME": str(home),
        "MYSTOCKS_STACK__KAFKA_PORT": str(kafka),
        "MYSTOCKS_STACK__CONTROLLER_PORT": str(controller),
        "MYSTOCKS_STACK__REDIS_PORT": str(redis),
        "MYSTOCKS_KAFKA__BOOTSTRAP_SERVERS": f"{host}:{kafka}",
        "MYSTOCKS_REDIS__URL": f"redis://{host}:{redis}/0",
    }


def _stop_abandoned_stacks() -> None:
    """Stop and remove private stacks whose test run is gone (killed before its teardown)."""
    for home in STACK_HOMES.glob("test-*"):
        try:
            info = json.loads((home / SESSION_FILE).read_text())
        except (OSError, ValueError):
            continue
        owner = int(info["owner_pid"])
        if process_start_time(owner) == info["owner_start"]:
            continue  # that run is still going
        LocalStack(StackConfig(**info["stack"])).down()
        shutil.rmtree(home, ignore_errors=True)


def pytest_configure(config: pytest.Config) -> None:
    # with pytest-xdist (`make test` runs `-n 2`) each worker process gets a private stack of its own
    # (its own ports and home), so a test that pauses or restarts its broker disturbs no other test;
    # the controller process runs no test and starts no stack
    if config.getoption("--stack") != "own" or _is_xdist_controller(config):
        return
    try:
        host = _env_settings().stack.host
    except ConfigError as exc:
        raise pytest.UsageError(f"MYSTOCKS_* settings: {exc}") from None
    _stop_abandoned_stacks()
    os.environ.update(private_stack_env(STACK_HOMES / f"test-{os.getpid()}", host))


def _is_xdist_controller(config: pytest.Config) -> bool:
    """True in the pytest-xdist controller of a ``-n N`` run (it only distributes tests)."""
    if hasattr(config, "workerinput"):
        return False
    try:
        return int(config.getoption("numprocesses") or 0) > 0
    except (ValueError, TypeError, AttributeError):  # no xdist, or "-n auto" style strings
        return bool(getattr(config.option, "numprocesses", None))


@pytest.fixture(scope="session")
def settings() -> Settings:
    """Settings from the environment (with ``--stack=own``: the private stack of this run)."""
    return _env_settings()


@pytest.fixture(scope="session")
def stack(settings: Settings, pytestconfig: pytest.Config) -> Iterator[LocalStack]:
    """The running local stack; started here unless it is running already (``--stack=env``)."""
    st = LocalStack(settings.stack)
    own = pytestconfig.getoption("--stack") == "own"
    was_running = all(c.state == "running" for c in st.status())
    if own:
        st.home.mkdir(parents=True, exist_ok=True)
        cfg = {k: getattr(settings.stack, k) for k in ("host", "kafka_port", "controller_port", "redis_port",
                                                        "home", "kafka_version", "cache_dir")}
        (st.home / SESSION_FILE).write_text(json.dumps(
            {"owner_pid": os.getpid(), "owner_start": process_start_time(os.getpid()), "stack": cfg}))
    try:
        st.up()  # raises StackError (test error, not skip) when it cannot start
        from mystocks_gpu.topics import all_specs
        from mystocks_gpu.topics.admin import TopicAdmin

        TopicAdmin(settings.kafka).create(all_specs())  # the catalog, as `make demo` / `topics create` leave it
        yield st
    finally:
        if not was_running:
            st.down()
        if own:
            shutil.rmtree(st.home, ignore_errors=True)


@pytest.fixture(scope="session")
def secure_stack(settings: Settings) -> Iterator[Any]:
    """A SECURE private stack for this session (TLS, SCRAM-SHA-512, ACLs, Redis TLS + ACL users) on
    its own free ports and home (``.stack/test-<pid>-secure``), with the topic catalog created by
    the admin. Used by ``tests/integration/secure`` only; if it cannot start, those tests fail with
    the reason (never skip). ``secure_stack.env(NAME)`` gives a principal's ``MYSTOCKS_*``."""
    from mystocks_gpu.infra.stack_secure import SecureStack
    from mystocks_gpu.topics import all_specs
    from mystocks_gpu.topics.admin import TopicAdmin

    st = _start_on_free_ports(SecureStack, settings, STACK_HOMES / f"test-{os.getpid()}-secure")
    try:
        admin = load_settings(environ=st.env("admin"))
        TopicAdmin(admin.kafka).create(all_specs())
        yield st
    finally:
        st.down()
        shutil.rmtree(st.home, ignore_errors=True)


def _reserved_ports() -> set[int]:
    """Ports this run's settings name (the private plain stack's: drawn at start, bound later)."""
    out = set()
    for k in ("MYSTOCKS_STACK__KAFKA_PORT", "MYSTOCKS_STACK__CONTROLLER_PORT", "MYSTOCKS_STACK__REDIS_PORT"):
        try:
            out.add(int(os.environ[k]))
        except (KeyError, ValueError):
            pass
    return out


#: what a server says when a port drawn free was bound by another process before it (a race)
PORT_CLASH = ("is taken by another process", "Address already in use", "address already in use")


def _start_on_free_ports(make: Callable[[StackConfig], Any], settings: Settings, home: Path,
                         attempts: int = 3) -> Any:
    """A stack made by ``make(cfg)`` in ``home``, started on ports drawn free (none of this run's
    reserved ones); when another process binds one of them between the draw and the start (8
    checkouts test at once), it is stopped and started again on a new draw (``attempts`` in all).
    A session file lets a later run stop it if this one is killed."""
    from mystocks_gpu.infra.exceptions import StackError

    host = settings.stack.host
    for attempt in range(1, attempts + 1):
        kafka, controller, redis = _free_ports(host, 3, exclude=_reserved_ports())
        cfg = StackConfig(host=host, kafka_port=kafka, controller_port=controller, redis_port=redis, home=str(home),
                          kafka_version=settings.stack.kafka_version, cache_dir=settings.stack.cache_dir,
                          kafka_heap_mb=384, kafka_young_mb=0,  # a small broker, G1 sizes its young generation
                          # TLS + SCRAM + authorizer start slower: 300 s at least on a busy box
                          startup_timeout_s=max(settings.stack.startup_timeout_s, 300.0))
        st = make(cfg)
        st.home.mkdir(parents=True, exist_ok=True)
        keep = {k: getattr(cfg, k) for k in ("host", "kafka_port", "controller_port", "redis_port", "home",
                                             "kafka_version", "cache_dir")}
        (st.home / SESSION_FILE).write_text(json.dumps(
            {"owner_pid": os.getpid(), "owner_start": process_start_time(os.getpid()), "stack": keep}))
        try:
            st.up()
            return st
        except StackError as exc:
            st.down()
            if attempt == attempts or not any(s in str(exc) for s in PORT_CLASH):
                shutil.rmtree(st.home, ignore_errors=True)
                raise
            shutil.rmtree(st.home, ignore_errors=True)  # a port race: new ports, new storage
    raise AssertionError("unreachable")


@pytest.fixture()
def unique() -> str:
    """A short unique suffix for topic and group names."""
    return uuid.uuid4().hex[:10]


def run_cli(*args: str, timeout: float = 120, env: dict[str, str] | None = None,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``mystocks-gpu ARGS`` in a subprocess and capture its output."""
    return subprocess.run([sys.executable, "-m", "mystocks_gpu.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env={**os.environ, **(env or {})}, input=input)


def wait_until(cond: Callable[[], Any], timeout_s: float, what: str | Callable[[], str],
               every_s: float = 0.1) -> Any:
    """Poll ``cond`` until it returns a truthy value (returned) or ``timeout_s`` seconds pass
    (AssertionError naming ``what``, or what ``what()`` says then, e.g. a log's tail): a wait on a
    condition with a deadline, not a fixed sleep."""
    deadline = time.monotonic() + timeout_s
    while True:
        got = cond()
        if got:
            return got
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what() if callable(what) else what}")
        time.sleep(every_s)
