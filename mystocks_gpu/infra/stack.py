"""The local stack: a real single-node Apache Kafka (KRaft, JVM, jars from Maven Central) and
Redis (the system ``redis-server``) on loopback.

``up`` is idempotent and waits for health; ``down`` stops only what ``up`` started: a pid file under
``StackConfig.home`` holds the pid and the process start time, and a pid is signalled only while
that process is still ours (same start time, and its command line names this stack's Kafka
``server.properties`` or Redis port), so a pid reused by another process is left alone.
``status`` reports each component. The Kafka jars are resolved with Maven into a cache shared by
checkouts, with a manifest (name + SHA-1 of every jar) written after a complete resolve and
checked before each use: a damaged or partial cache is resolved again. Kafka's own tools run from
the same jars via :func:`kafka_tool` (e.g. ``org.apache.kafka.tools.ConsumerPerformance``).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mystocks_gpu.infra.config import StackConfig
from mystocks_gpu.infra.cpu_affinity import check_cpus, children_on, parse_cpu_list
from mystocks_gpu.infra.exceptions import StackError
from mystocks_gpu.infra.stack_process import (  # one copy of the process helpers, shared with the optional servers
    JAR_MANIFEST,
    _alive,
    _cmdline,
    _sha1,
    open_log,
    process_start_time,
)
from mystocks_gpu.infra.stack_process import port_open as _port_open
from mystocks_gpu.infra.stack_process import tail as _tail

_TEMPLATES = Path(__file__).with_name("kafka")
MIN_JAVA = 17
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ComponentStatus:
    """One component's state: ``running`` (ours), ``stopped``, or ``foreign`` (port held by another process)."""

    name: str
    state: str
    pid: int | None
    address: str
    detail: str = ""


def java_major(version_output: str) -> int:
    """Major version from ``java -version`` output: ``"17.0.15"`` -> 17, ``"1.8.0_292"`` -> 8; 0 if unreadable."""
    try:
        v = version_output.split('"')[1]
    except IndexError:
        return 0
    if v.startswith("1."):
        v = v[2:]
    digits = ""
    for ch in v:
        if not ch.isdigit():
            break
        digits += ch
    return int(digits) if digits else 0


class LocalStack:
    """Start, stop and inspect the loopback Kafka + Redis stack described by a :class:`StackConfig`."""

    #: True for :class:`~mystocks_gpu.infra.stack_secure.SecureStack` (TLS, SCRAM, ACLs)
    secure = False

    def __init__(self, cfg: StackConfig) -> None:
        self.cfg = cfg
        self.home = Path(cfg.home).expanduser().resolve()
        self.cache = Path(cfg.cache_dir).expanduser() / f"kafka-{cfg.kafka_version}"
        self.kafka_dir = self.home / "kafka"
        self.redis_dir = self.home / "redis"

    # ---- paths ---------------------------------------------------------------------------
    @property
    def libs(self) -> Path:
        """Directory holding the Kafka runtime jars."""
        return self.cache / "libs"

    @property
    def classpath(self) -> str:
        """Java classpath of the Kafka release (broker and tools)."""
        return str(self.libs / "*")

    @property
    def bootstrap(self) -> str:
        """``host:port`` of the broker."""
        return f"{self.cfg.host}:{self.cfg.kafka_port}"

    @property
    def redis_url(self) -> str:
        """``redis://host:port/0`` of the Redis server."""
        return f"redis://{self.cfg.host}:{self.cfg.redis_port}/0"

    def _pidfile(self, name: str) -> Path:
        return self.home / f"{name}.pid"

    def pid(self, name: str) -> int | None:
        """Pid of a running component of this stack (``kafka`` or ``redis``), or None."""
        return self._read_pid(name)

    def _read_pid(self, name: str) -> int | None:
        """Pid from ``NAME.pid`` when that process is alive and ours (see :meth:`_is_ours`), else None."""
        try:
            fields = self._pidfile(name).read_text().split()
            pid = int(fields[0])
            started = int(fields[1]) if len(fields) > 1 else None
        except (OSError, ValueError, IndexError):
            return None
        return pid if _alive(pid) and self._is_ours(name, pid, started) else None

    def _is_ours(self, name: str, pid: int, started: int | None) -> bool:
        """Whether ``pid`` is the component this stack started: the start time recorded in the pid
        file matches, and the command line names this stack's Kafka ``server.properties`` (kafka) or
        ``redis-server`` on this port (redis; it rewrites its title to ``redis-server HOST:PORT``).
        Without ``/proc`` (not Linux) liveness is all that can be checked."""
        if not os.path.isdir("/proc/self"):
            return True
        if started is not None and process_start_time(pid) != started:
            return False
        cmd = _cmdline(pid)
        if cmd is None:
            return False
        if name == "kafka":
            return "kafka.Kafka" in cmd and str(self.kafka_dir / "server.properties") in cmd
        port = self.cfg.redis_port
        return "redis-server" in cmd and (f"{self.cfg.host}:{port}" in cmd or f"--port {port} " in f"{cmd} ")

    def _write_pid(self, name: str, pid: int) -> None:
        """Record ``pid`` and its start time in ``NAME.pid``."""
        started = process_start_time(pid)
        self._pidfile(name).write_text(f"{pid} {started}" if started is not None else str(pid))

    # ---- prerequisites -------------------------------------------------------------------
    def java(self) -> str:
        """Path of a Java 17+ ``java``; :class:`StackError` when missing or too old."""
        java = shutil.which("java")
        if java is None:
            raise StackError(f"Java is missing: Kafka 4 needs a Java {MIN_JAVA}+ runtime "
                             "(`make install` installs it; `make doctor` says what is missing)")
        proc = subprocess.run([java, "-version"], capture_output=True, text=True)
        major = java_major(proc.stderr + proc.stdout)
        if major < MIN_JAVA:
            found = f"Java {major}" if major else "a Java of unknown version"
            raise StackError(f"{found} found at {java}; Kafka 4 needs Java {MIN_JAVA}+ "
                             "(`make install` installs it; or update-alternatives --config java)")
        return java

    def jar_problem(self) -> str | None:
        """Why the cached jars cannot be used (no manifest, a jar missing, extra, or different
        from the manifest), or None when they match the manifest of a complete resolve."""
        manifest = self.libs / JAR_MANIFEST
        try:
            lines = manifest.read_text().splitlines()
        except OSError:
            return f"no manifest of a complete resolve in {self.libs}"
        want: dict[str, str] = {}
        for ln in lines:
            digest, _, jar = ln.partition("  ")
            if len(digest) != 40 or not jar:
                return f"{manifest} is damaged"
            want[jar] = digest
        have = {p.name for p in self.libs.glob("*.jar")}
        if not want or have != set(want):
            diff = sorted(set(want) ^ have)
            return f"jars missing or extra in {self.libs}: {', '.join(diff[:3]) or 'empty manifest'}"
        for jar, digest in want.items():
            if _sha1(self.libs / jar) != digest:
                return f"{self.libs / jar} differs from the manifest"
        return None

    @contextlib.contextmanager
    def _cache_lock(self) -> Iterator[None]:
        """One resolver at a time per cache (checkouts share it)."""
        self.cache.mkdir(parents=True, exist_ok=True)
        with open(self.cache / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def fetch_kafka(self) -> Path:
        """The pinned Kafka release's jars, verified against the cache manifest; resolved with
        Maven (again) when the cache is absent, partial or damaged."""
        with self._cache_lock():
            problem = self.jar_problem()
            if problem is None:
                return self.libs
            if self.libs.exists():
                log.warning("resolving the Kafka jars again: %s", problem)
            mvn = shutil.which("mvn")
            if mvn is None:
                raise StackError("Maven (mvn) is missing: it resolves Kafka's jars from Maven Central "
                                 "(`make install` installs it; `make doctor` says what is missing)")
            pom = self.cache / "pom.xml"
            pom.write_text((_TEMPLATES / "pom.xml").read_text().replace("@KAFKA_VERSION@", self.cfg.kafka_version))
            tmp = self.cache / f"libs.resolving-{os.getpid()}"
            shutil.rmtree(tmp, ignore_errors=True)
            proc = subprocess.run(
                # Maven's local repository under the cache too (never ~/.m2): see stack_process.maven_repo
                [mvn, "-q", "-B", f"-Dmaven.repo.local={Path(self.cfg.cache_dir).expanduser() / 'm2'}",
                 "-f", str(pom), "dependency:copy-dependencies",
                 f"-DoutputDirectory={tmp}", "-DincludeScope=runtime"],
                capture_output=True, text=True,
            )
            jars = sorted(tmp.glob("*.jar"))
            if proc.returncode != 0 or not jars:
                shutil.rmtree(tmp, ignore_errors=True)
                raise StackError(f"Maven could not resolve Kafka {self.cfg.kafka_version} (needs the network "
                                 f"to Maven Central):\n{(proc.stdout + proc.stderr)[-3000:]}")
            (tmp / JAR_MANIFEST).write_text("".join(f"{_sha1(j)}  {j.name}\n" for j in jars))
            (tmp / ".complete").write_text(self.cfg.kafka_version)  # what older checkouts sharing the cache look for
            # swap directories (brokers of other checkouts may be reading the old jars): the path
            # is missing only between two renames, and the old files are removed afterwards
            old = self.cache / f"libs.old-{os.getpid()}"
            if self.libs.exists():
                self.libs.rename(old)
            tmp.rename(self.libs)
            shutil.rmtree(old, ignore_errors=True)
            return self.libs

    # ---- Kafka ---------------------------------------------------------------------------
    def _broker_properties(self, listeners: str, **fill: str) -> str:
        """The broker's ``server.properties``: the shared ``server-common.properties`` then the
        ``listeners`` template of this stack's mode, every ``@NAME@`` placeholder filled (host, ports,
        log dir, and ``fill``: ``NAME=value``)."""
        text = (_TEMPLATES / "server-common.properties").read_text() + (_TEMPLATES / listeners).read_text()
        for k, v in {"HOST": self.cfg.host, "PORT": str(self.cfg.kafka_port),
                     "CONTROLLER_PORT": str(self.cfg.controller_port),
                     "LOG_DIR": str(self.kafka_dir / "data"), **fill}.items():
            text = text.replace(f"@{k}@", v)
        return text

    def _server_properties(self) -> Path:
        props = self.kafka_dir / "server.properties"
        props.write_text(self._broker_properties("server.properties"))
        return props

    def _java_cmd(self, main: str, *args: str, heap_mb: int = 256, young_mb: int = 0,
                  jvm: tuple[str, ...] = ()) -> list[str]:
        # One GC worker thread: with the heaps here a young collection copies a few MB, and two workers
        # sharing two cores with the stack's clients stalled whole pauses on one preempted worker
        # (G1 "Termination" 156 ms of a 174 ms pause that copied 4.7 MB). Survivors go to the old
        # generation at once (MaxTenuringThreshold=0): the broker's young survivors are objects that
        # live for seconds (ages 1-9 under load), which G1's default copied again in every young
        # pause (7 MB, 15 ms of a 16-ms pause); promoted once, the pause copies only the newest
        # (~0.8 MB) and took 5-7 ms (bench/HISTORY.md 2026-12-05, 20:47 on). ``young_mb``: a young
        # generation of that size (-Xmn) in a heap committed whole (stack.kafka_young_mb).
        sizes = [f"-Xms{heap_mb}m", f"-Xmn{young_mb}m"] if young_mb else [f"-Xms{min(heap_mb, 256)}m"]
        return [self.java(), f"-Xmx{heap_mb}m", *sizes, "-XX:+UseG1GC",
                "-XX:MaxGCPauseMillis=20", "-XX:ParallelGCThreads=1", "-XX:ConcGCThreads=1",
                "-XX:MaxTenuringThreshold=0", *jvm,
                "-Djava.awt.headless=true",
                f"-Dlog4j2.configurationFile={_TEMPLATES / 'log4j2.properties'}",
                "-cp", self.classpath, main, *args]

    def _format_storage(self, props: Path) -> None:
        if (self.kafka_dir / "data" / "meta.properties").exists():
            return
        cluster_id = uuid.uuid4().hex[:22]
        proc = subprocess.run(self._java_cmd("kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(props)),
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise StackError(f"formatting Kafka storage failed:\n{(proc.stdout + proc.stderr)[-2000:]}")

    def start_kafka(self) -> int:
        """Start the broker if not running; returns its pid once it answers metadata requests."""
        pid = self._read_pid("kafka")
        if pid is not None:
            self._wait_kafka(pid)
            return pid
        for port in (self.cfg.kafka_port, self.cfg.controller_port):
            if _port_open(self.cfg.host, port):
                raise StackError(f"port {self.cfg.host}:{port} is taken by another process; "
                                 "stop it or set stack.kafka_port / stack.controller_port")
        cpus = parse_cpu_list(self.cfg.kafka_cpus, "stack.kafka_cpus")
        check_cpus(cpus, "stack.kafka_cpus")  # before any download or format: a bad list fails at once
        self.java()
        self.fetch_kafka()
        self.kafka_dir.mkdir(parents=True, exist_ok=True)
        props = self._server_properties()
        self._format_storage(props)
        with open_log(self.kafka_dir / "kafka.log") as out:
            # the collector's pauses and concurrent cycles, with wall-clock times (two files of 5 MB at most):
            # a latency stall lines up with them (the bench's runs record their window's start)
            gc_log = f"-Xlog:gc:file={self.kafka_dir / 'gc.log'}:time,uptime:filecount=2,filesize=5m"
            with children_on(cpus):  # every thread of the broker, from its first (stack.kafka_cpus)
                proc = subprocess.Popen(self._java_cmd("kafka.Kafka", str(props), heap_mb=self.cfg.kafka_heap_mb,
                                                       young_mb=self.cfg.kafka_young_mb, jvm=(gc_log,)),
                                        stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        start_new_session=True, cwd=self.kafka_dir)
        self._write_pid("kafka", proc.pid)
        self._wait_kafka(proc.pid)
        return proc.pid

    def _wait_kafka(self, pid: int) -> None:
        from confluent_kafka.admin import AdminClient

        deadline = time.monotonic() + self.cfg.startup_timeout_s
        klog = self.kafka_dir / "kafka.log"
        admin = None  # created once the port answers; quiet: refused connections while waiting are expected
        while time.monotonic() < deadline:
            if not _alive(pid):
                raise StackError(f"Kafka exited during startup; last log lines ({klog}):\n{_tail(klog)}")
            if _port_open(self.cfg.host, self.cfg.kafka_port):
                if admin is None:
                    admin = AdminClient({**self.admin_client_conf(), "log_level": 0,
                                         "socket.connection.setup.timeout.ms": 2000})
                try:
                    md = admin.list_topics(timeout=3)
                    if md.brokers:
                        return
                except Exception:  # noqa: BLE001 - not up yet; the deadline bounds the wait
                    pass
            time.sleep(0.5)
        raise StackError(f"Kafka did not come up within {self.cfg.startup_timeout_s:.0f} s; "
                         f"last log lines ({klog}):\n{_tail(klog)}")

    # ---- Redis ---------------------------------------------------------------------------
    def start_redis(self) -> int:
        """Start ``redis-server`` on loopback if not running; returns its pid once it answers PING."""
        pid = self._read_pid("redis")
        if pid is None:
            server = shutil.which("redis-server")
            if server is None:
                raise StackError("redis-server is missing (apt-get install redis-server; `make install` does it)")
            if _port_open(self.cfg.host, self.cfg.redis_port):
                raise StackError(f"port {self.cfg.host}:{self.cfg.redis_port} is taken by another process; "
                                 "stop it or set stack.redis_port")
            self.redis_dir.mkdir(parents=True, exist_ok=True)
            log = self.redis_dir / "redis.log"
            proc = subprocess.Popen(
                self._redis_command(server, log),
                stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
            pid = proc.pid
            self._write_pid("redis", pid)
        self._wait_redis(pid)
        return pid

    def _wait_redis(self, pid: int) -> None:
        import redis

        deadline = time.monotonic() + 20
        client = self._redis_client()
        while time.monotonic() < deadline:
            if not _alive(pid):
                raise StackError(f"redis-server exited during startup:\n{_tail(self.redis_dir / 'redis.log')}")
            try:
                if client.ping():
                    return
            except redis.RedisError:
                pass
            time.sleep(0.2)
        raise StackError(f"Redis did not answer PING within 20 s:\n{_tail(self.redis_dir / 'redis.log')}")

    # ---- hooks of the secure stack (stack_secure.SecureStack overrides them) -----------------
    def admin_client_conf(self) -> dict[str, Any]:
        """librdkafka settings of the stack's own admin client (health checks)."""
        return {"bootstrap.servers": self.bootstrap}

    def _redis_command(self, server: str, log_file: Path) -> list[str]:
        return [server, "--bind", self.cfg.host, "--port", str(self.cfg.redis_port), "--save", "",
                "--appendonly", "no", "--dir", str(self.redis_dir), "--logfile", str(log_file), "--daemonize", "no",
                "--protected-mode", "yes"]

    def _redis_client(self) -> Any:
        import redis

        return redis.Redis.from_url(self.redis_url, socket_connect_timeout=1)

    # ---- lifecycle -----------------------------------------------------------------------
    def up(self) -> list[ComponentStatus]:
        """Start Redis and Kafka (idempotent) and wait until both are healthy. When the broker cannot
        start, a Redis server this call started is stopped again (one it found running is left), so a
        failed ``up`` leaves nothing of its own behind."""
        self.home.mkdir(parents=True, exist_ok=True)
        redis_was_running = self._read_pid("redis") is not None
        self.start_redis()
        try:
            self.start_kafka()
        except BaseException:
            if not redis_was_running:
                self._stop("redis")
            raise
        return self.status()

    def _stop(self, name: str, timeout: float = 30.0, hard: bool = False) -> bool:
        """Signal the component's process group when the pid file names a live process of ours;
        a stale pid file (dead or reused pid) is removed and nothing is signalled."""
        pid = self._read_pid(name)
        self._pidfile(name).unlink(missing_ok=True)
        if pid is None:
            return False
        try:
            os.killpg(pid, signal.SIGKILL if hard else signal.SIGTERM)
        except ProcessLookupError:
            return True
        deadline = time.monotonic() + timeout
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if _alive(pid):
            os.killpg(pid, signal.SIGKILL)
            while _alive(pid):
                time.sleep(0.1)
        return True

    def stop_kafka(self) -> bool:
        """Stop the broker this stack started (SIGTERM, then SIGKILL after 30 s)."""
        return self._stop("kafka")

    def restart_kafka(self, hard: bool = False) -> int:
        """Stop (SIGTERM, or SIGKILL when ``hard``) and start the broker, keeping its data."""
        self._stop("kafka", hard=hard)
        deadline = time.monotonic() + 30
        while _port_open(self.cfg.host, self.cfg.kafka_port) and time.monotonic() < deadline:
            time.sleep(0.2)
        return self.start_kafka()

    def down(self) -> list[str]:
        """Stop what ``up`` started (the optional servers of ``up --with`` first); returns the names
        stopped. Foreign processes are left alone."""
        from mystocks_gpu.infra.stack_services import stop_services

        return stop_services(self) + [n for n in ("kafka", "redis") if self._stop(n)]

    def wipe_kafka(self) -> Path | None:
        """Delete the broker's log dir: every topic, committed offset and transaction state (the
        broker must be stopped). The next ``up`` formats a fresh one; the secure stack's SCRAM users
        are added again then. Returns the deleted dir, ``None`` if there was none."""
        if self._read_pid("kafka") is not None:
            raise StackError("the stack's broker is running: stop it first (mystocks-gpu stack down --wipe)")
        data = self.kafka_dir / "data"
        if not data.exists():
            return None
        shutil.rmtree(data)
        return data

    def status(self) -> list[ComponentStatus]:
        """State of each component."""
        out = []
        for name, port in (("kafka", self.cfg.kafka_port), ("redis", self.cfg.redis_port)):
            pid = self._read_pid(name)
            addr = f"{self.cfg.host}:{port}"
            if pid is not None:
                healthy = _port_open(self.cfg.host, port)
                out.append(ComponentStatus(name, "running" if healthy else "starting", pid, addr))
            elif _port_open(self.cfg.host, port):
                out.append(ComponentStatus(name, "foreign", None, addr, "port held by a process this stack did not start"))
            else:
                out.append(ComponentStatus(name, "stopped", None, addr))
        return out

    def kafka_tool(self, main_class: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        """Run one of Kafka's command-line tools from the same jars, e.g.
        ``kafka_tool("org.apache.kafka.tools.ConsumerPerformance", "--bootstrap-server", ...)``."""
        self.fetch_kafka()
        return subprocess.run(self._java_cmd(main_class, *args), capture_output=True, text=True, timeout=timeout)
