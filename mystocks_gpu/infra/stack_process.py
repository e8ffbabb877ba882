"""One optional server process of the local stack (PostgreSQL, the Kafka Connect worker,
Prometheus), with the same ownership rules as Kafka and Redis in :mod:`stack`: a pid file
``<stack home>/<name>.pid`` holds the pid and its start time, and a pid is signalled only while
that process is still ours (same start time, and its command line names ``marker``, a path inside
this stack's home), so a reused pid is left alone. Also: where the repository's ``deploy/`` files
are, and a Maven resolve into a jar directory verified by a SHA-1 manifest (shared by checkouts).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from mystocks_gpu.infra.exceptions import StackError

#: "<sha1>  <file name>" per jar (sha1sum format), written after a complete resolve (as for Kafka's jars)
JAR_MANIFEST = "MANIFEST.sha1"
#: a server's log over this size (bytes) when the server starts moves to ``<name>.log.1`` (the one
#: before it is dropped), so logs appended across restarts stay bounded
LOG_ROTATE_BYTES = 64 << 20


class StackLike(Protocol):
    """What the optional servers use of :class:`mystocks_gpu.infra.stack.LocalStack` (not imported
    here: ``LocalStack.down`` stops these servers, so ``stack`` imports this side)."""

    home: Path
    cfg: Any

    def fetch_kafka(self) -> Path: ...

    def _java_cmd(self, main: str, *args: str, heap_mb: int = 256, young_mb: int = 0,
                  jvm: tuple[str, ...] = ()) -> list[str]: ...


def proc_stat(pid: int) -> list[str] | None:
    """The fields of ``/proc/PID/stat`` after the command name (``[0]`` = state, field 3 of
    proc(5); field N is ``[N - 3]``), or None when the process or the file does not exist."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def process_start_time(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot (``/proc/PID/stat`` field 22), or None."""
    fields = proc_stat(pid)
    try:
        return int(fields[19]) if fields else None
    except (IndexError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    fields = proc_stat(pid)  # a zombie child still answers kill(0)
    return fields is None or not fields or fields[0] != "Z"


def _cmdline(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return None


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """Whether something accepts TCP connections on ``host:port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        return s.connect_ex((host, port)) == 0


def _sha1(path: Path) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def open_log(path: Path, max_bytes: int = LOG_ROTATE_BYTES) -> BinaryIO:
    """Open a server's log for appending (binary), first moving it to ``<path>.1`` when it holds over
    ``max_bytes`` (replacing an older ``.1``): a broker's INFO log grew to 500 MB over a day of
    benchmarks, appended across restarts."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        if path.stat().st_size > max_bytes:
            os.replace(path, path.with_name(path.name + ".1"))
    return open(path, "ab")  # noqa: SIM115 - the caller closes it once the child holds its copy


def tail(path: Path, n: int = 40) -> str:
    """The last ``n`` lines of a log file."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"

#: the repository root of this checkout (``deploy/`` and ``mystocks_gpu/`` are in it)
REPO_ROOT = Path(__file__).resolve().parents[2]


def deploy_path(*parts: str) -> Path:
    """A file under the repository's ``deploy/`` (connector configs, the converter's source,
    Prometheus rules); :class:`StackError` when this install has no such file (a wheel install
    without the repository)."""
    p = REPO_ROOT.joinpath("deploy", *parts)
    if not p.exists():
        raise StackError(f"{p} is missing: the optional stack components use the repository's deploy/ "
                         "files (run from a clone of the repository, installed with `make install`)")
    return p


class ManagedServer:
    """A server process started by the stack: pid file, ownership check, start, stop.

    ``marker``: a string (a config path in this stack's home) the process's command line contains.
    """

    def __init__(self, name: str, home: Path, marker: str, host: str, port: int) -> None:
        self.name = name
        self.home = home
        self.marker = marker
        self.host = host
        self.port = port
        self.log = home / name / f"{name}.log"

    @property
    def pidfile(self) -> Path:
        """``<home>/<name>.pid``."""
        return self.home / f"{self.name}.pid"

    def pid(self) -> int | None:
        """Pid of the running server when it is alive and ours, else None."""
        try:
            fields = self.pidfile.read_text().split()
            pid = int(fields[0])
            started = int(fields[1]) if len(fields) > 1 else None
        except (OSError, ValueError, IndexError):
            return None
        if not _alive(pid):
            return None
        if os.path.isdir("/proc/self"):
            if started is not None and process_start_time(pid) != started:
                return None
            cmd = _cmdline(pid)
            if cmd is None or self.marker not in cmd:
                return None
        return pid

    def check_port_free(self, setting: str) -> None:
        """:class:`StackError` when the port is held by a process this stack did not start."""
        if port_open(self.host, self.port):
            raise StackError(f"port {self.host}:{self.port} is taken by another process; stop it or set {setting}")

    def spawn(self, cmd: Sequence[str], *, user: str | None = None, env: dict[str, str] | None = None,
              cwd: Path | None = None) -> int:
        """Start ``cmd`` in its own session, output appended to :attr:`log`; records the pid."""
        with open_log(self.log) as out:
            proc = subprocess.Popen(list(cmd), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True, cwd=cwd or self.log.parent, user=user,
                                    env={**os.environ, **(env or {})})
        started = process_start_time(proc.pid)
        self.pidfile.write_text(f"{proc.pid} {started}" if started is not None else str(proc.pid))
        return proc.pid

    def wait(self, pid: int, ready: object, timeout_s: float, what: str) -> None:
        """Poll ``ready()`` (truthy when up) until ``timeout_s``; :class:`StackError` with the log tail
        when the process exits or the deadline passes."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not _alive(pid):
                raise StackError(f"{what} exited during startup; last log lines ({self.log}):\n{tail(self.log)}")
            try:
                if ready():  # type: ignore[operator]
                    return
            except Exception:  # noqa: BLE001 - not up yet; the deadline bounds the wait
                pass
            time.sleep(0.5)
        raise StackError(f"{what} did not come up within {timeout_s:.0f} s; last log lines ({self.log}):\n{tail(self.log)}")

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 30.0, group: bool = True) -> bool:
        """Signal the server (its process group when ``group``) if it is ours; SIGKILL after
        ``timeout_s``. A stale pid file is removed and nothing is signalled. True when it was running."""
        pid = self.pid()
        self.pidfile.unlink(missing_ok=True)
        if pid is None:
            return False
        try:
            (os.killpg if group else os.kill)(pid, sig)
        except ProcessLookupError:
            return True
        deadline = time.monotonic() + timeout_s
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            while _alive(pid):
                time.sleep(0.1)
        return True


@contextlib.contextmanager
def dir_lock(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path/.lock`` (one resolver/builder at a time per cache directory)."""
    path.mkdir(parents=True, exist_ok=True)
    with open(path / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def jars_problem(libs: Path) -> str | None:
    """Why the jars in ``libs`` differ from its SHA-1 manifest, or None when they match."""
    try:
        lines = (libs / JAR_MANIFEST).read_text().splitlines()
    except OSError:
        return f"no manifest of a complete resolve in {libs}"
    want: dict[str, str] = {}
    for ln in lines:
        digest, _, jar = ln.partition("  ")
        if len(digest) != 40 or not jar:
            return f"{libs / JAR_MANIFEST} is damaged"
        want[jar] = digest
    have = {p.name for p in libs.glob("*.jar")}
    if not want or have != set(want):
        return f"jars missing or extra in {libs}"
    for jar, digest in want.items():
        if _sha1(libs / jar) != digest:
            return f"{libs / jar} differs from the manifest"
    return None


def publish_jars(tmp: Path, dest: Path) -> Path:
    """Write the SHA-1 manifest of ``tmp``'s jars and swap ``tmp`` into ``dest`` by renames."""
    jars = sorted(tmp.glob("*.jar"))
    (tmp / JAR_MANIFEST).write_text("".join(f"{_sha1(j)}  {j.name}\n" for j in jars))
    old = dest.with_name(f"{dest.name}.old-{os.getpid()}")
    if dest.exists():
        dest.rename(old)
    tmp.rename(dest)
    shutil.rmtree(old, ignore_errors=True)
    return dest


def maven_repo(cache_dir: str | Path) -> Path:
    """Maven's local repository for everything the stack resolves: ``<stack.cache_dir>/m2``
    (``~/.cache/mystocks-gpu/m2`` by default), never ``~/.m2``."""
    return Path(cache_dir).expanduser() / "m2"


def maven(args: Sequence[str], what: str, repo: Path, timeout_s: float = 1800) -> None:
    """Run ``mvn -q -B -Dmaven.repo.local=REPO ARGS``; :class:`StackError` with Maven's output
    tail when it fails."""
    mvn = shutil.which("mvn")
    if mvn is None:
        raise StackError(f"Maven (mvn) is missing: it {what} (`make install` installs it)")
    proc = subprocess.run([mvn, "-q", "-B", f"-Dmaven.repo.local={repo}", *args], capture_output=True, text=True, timeout=timeout_s)
    if proc.returncode != 0:
        raise StackError(f"Maven failed: it {what} (needs the network to Maven Central the first time):\n"
                         f"{(proc.stdout + proc.stderr)[-3000:]}")
