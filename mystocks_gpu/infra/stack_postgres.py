"""PostgreSQL for the local stack (``stack up --with postgres``; ``--with connect`` brings it): the
database the Kafka Connect JDBC sinks write to.

Debian's ``postgresql`` package provides the server (``/usr/lib/postgresql/<N>/bin``, the newest
installed version is used) and ``psql``. The cluster lives in ``<stack home>/postgres/data`` (as
root, when the ``postgres`` user cannot reach the stack home -- a checkout under /root -- in
``/var/tmp/mystocks-gpu-postgres/<hash>``, linked from ``<stack home>/postgres``),
listens on ``stack.host:services.postgres_port`` (TCP, SCRAM passwords) and on a Unix socket in
``<stack home>/postgres`` (trust, for the stack itself). The server refuses to run as root, so as
root it runs as the ``postgres`` system user (created by the package), which then owns the data
directory. ``initdb`` makes ``services.postgres_user`` the superuser; the stack creates
``services.postgres_db``. :meth:`PostgresServer.query` runs SQL through ``psql`` and returns rows.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

from mystocks_gpu.infra.exceptions import StackError
from mystocks_gpu.infra.services_config import ServicesConfig
from mystocks_gpu.infra.stack_process import ManagedServer, StackLike

SYSTEM_USER = "postgres"


def server_bin(tool: str) -> str:
    """Path of a PostgreSQL server program (``initdb``, ``postgres``, ``pg_isready``): the newest
    ``/usr/lib/postgresql/<N>/bin``, else ``PATH``; :class:`StackError` naming the apt package."""
    versions = sorted((p for p in Path("/usr/lib/postgresql").glob("*/bin") if (p / tool).exists()),
                      key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)
    if versions:
        return str(versions[-1] / tool)
    found = shutil.which(tool)
    if found is None:
        raise StackError(f"PostgreSQL's {tool} is missing (apt-get install postgresql; `make install` does it)")
    return found


#: where the cluster goes when the ``postgres`` user cannot reach the stack home (a checkout under
#: /root or another 0700 directory): one directory per stack home, named by a hash of its path
EXTERNAL_BASE = Path("/var/tmp/mystocks-gpu-postgres")


def reachable(path: Path, uid: int, gid: int) -> bool:
    """Whether user ``uid`` (group ``gid``) can traverse every existing directory down to ``path``."""
    import stat

    for d in [*reversed(path.parents), path]:
        try:
            st = d.stat()
        except FileNotFoundError:
            break
        bit = stat.S_IXUSR if st.st_uid == uid else stat.S_IXGRP if st.st_gid == gid else stat.S_IXOTH
        if not st.st_mode & bit:
            return False
    return True


def cluster_dir(home: Path) -> Path:
    """The cluster's directory: ``<home>/postgres``, or -- as root, when the ``postgres`` user
    cannot traverse to ``home`` -- ``EXTERNAL_BASE/<sha1 of home>[:16]`` (``initdb`` creates it
    and a symlink ``<home>/postgres`` to it). Creates nothing."""
    import hashlib

    inside = home / "postgres"
    if os.geteuid() != 0 or inside.is_symlink():
        return inside.resolve() if inside.is_symlink() else inside
    try:
        ids = pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        return inside
    if reachable(home, ids.pw_uid, ids.pw_gid):
        return inside
    return EXTERNAL_BASE / hashlib.sha1(str(home.resolve()).encode()).hexdigest()[:16]


class PostgresServer:
    """Start, stop and query the stack's PostgreSQL."""

    def __init__(self, stack: StackLike, cfg: ServicesConfig) -> None:
        self.cfg = cfg
        self.home = stack.home
        self.dir = cluster_dir(stack.home)
        self.data = self.dir / "data"
        self.server = ManagedServer("postgres", stack.home, str(self.data), stack.cfg.host, cfg.postgres_port)

    @property
    def jdbc_url(self) -> str:
        """``jdbc:postgresql://host:port/db`` for the JDBC sinks."""
        return f"jdbc:postgresql://{self.server.host}:{self.cfg.postgres_port}/{self.cfg.postgres_db}"

    def _run_as(self) -> str | None:
        """The system user the server runs as: ``postgres`` when we are root, else ourselves."""
        if os.geteuid() != 0:
            return None
        try:
            pwd.getpwnam(SYSTEM_USER)
        except KeyError:
            raise StackError("running as root, PostgreSQL needs the 'postgres' system user "
                             "(apt-get install postgresql creates it)") from None
        return SYSTEM_USER

    def _initdb(self, user: str | None) -> None:
        if (self.data / "PG_VERSION").exists():
            return
        if self.dir != self.home / "postgres":  # outside the home: see cluster_dir
            EXTERNAL_BASE.mkdir(mode=0o755, parents=True, exist_ok=True)
            self.home.mkdir(parents=True, exist_ok=True)
            link = self.home / "postgres"
            if not link.is_symlink() and not link.exists():
                link.symlink_to(self.dir, target_is_directory=True)
        self.dir.mkdir(parents=True, exist_ok=True)
        pwfile = self.dir / "pwfile"
        pwfile.write_text(self.cfg.postgres_password + "\n")
        if user is not None:
            ids = pwd.getpwnam(user)
            for p in (self.dir, pwfile):
                os.chown(p, ids.pw_uid, ids.pw_gid)
        pwfile.chmod(0o600)
        proc = subprocess.run(
            [server_bin("initdb"), "-D", str(self.data), "-U", self.cfg.postgres_user, f"--pwfile={pwfile}",
             "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--no-instructions"],
            capture_output=True, text=True, user=user, cwd=self.dir, timeout=300)
        pwfile.unlink(missing_ok=True)
        if proc.returncode != 0:
            raise StackError(f"initdb failed:\n{(proc.stdout + proc.stderr)[-2000:]}")

    def start(self, timeout_s: float = 120) -> int:
        """Start the server if not running (idempotent), create the database; returns the pid."""
        pid = self.server.pid()
        if pid is None:
            self.server.check_port_free("services.postgres_port")
            user = self._run_as()
            self._initdb(user)
            pid = self.server.spawn(
                [server_bin("postgres"), "-D", str(self.data), "-p", str(self.cfg.postgres_port),
                 "-c", f"listen_addresses={self.server.host}", "-c", f"unix_socket_directories={self.dir}",
                 "-c", "fsync=off", "-c", "max_connections=60", "-c", "shared_buffers=32MB"], user=user)
        self.server.wait(pid, self._ready, timeout_s, "PostgreSQL")
        if not self.query(f"SELECT 1 AS ok FROM pg_database WHERE datname = {_lit(self.cfg.postgres_db)}", db="postgres"):
            self.execute(f'CREATE DATABASE "{self.cfg.postgres_db}"', db="postgres")
        return pid

    def _ready(self) -> bool:
        proc = subprocess.run([server_bin("pg_isready"), "-q", "-h", str(self.dir), "-p", str(self.cfg.postgres_port)],
                              capture_output=True, timeout=10)
        return proc.returncode == 0

    def stop(self, timeout_s: float = 30) -> bool:
        """Fast shutdown (SIGINT to the postmaster: clients are disconnected, then it exits)."""
        return self.server.stop(signal.SIGINT, timeout_s, group=False)

    def purge(self) -> None:
        """Delete the (stopped) cluster, also when it lives outside the stack home."""
        if self.server.pid() is not None:
            raise StackError("PostgreSQL is running: stop it before purging its cluster")
        link = self.home / "postgres"
        shutil.rmtree(self.dir, ignore_errors=True)
        if link.is_symlink():
            link.unlink()

    # ---- SQL -----------------------------------------------------------------------------
    def _psql(self, sql: str, db: str | None) -> str:
        psql = shutil.which("psql") or server_bin("psql")
        proc = subprocess.run(
            [psql, "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-h", str(self.dir), "-p", str(self.cfg.postgres_port),
             "-U", self.cfg.postgres_user, "-d", db or self.cfg.postgres_db, "-c", sql],
            capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            raise StackError(f"psql failed ({sql[:80]}...): {proc.stderr.strip()[-1000:]}")
        return proc.stdout

    def execute(self, sql: str, db: str | None = None) -> None:
        """Run one SQL statement (no result)."""
        self._psql(sql, db)

    def query(self, sql: str, db: str | None = None) -> list[dict[str, Any]]:
        """Rows of a ``SELECT`` as dicts (via ``json_agg``: numbers, strings, JSON values decoded)."""
        out = self._psql(f"SELECT coalesce(json_agg(q), '[]'::json) FROM ({sql}) q", db).strip()
        return list(json.loads(out or "[]"))

    def table_exists(self, table: str) -> bool:
        """Whether ``public.<table>`` exists."""
        return bool(self.query(f"SELECT 1 AS ok FROM information_schema.tables WHERE table_name = {_lit(table)}"))


def _lit(text: str) -> str:
    """A SQL string literal."""
    return "'" + text.replace("'", "''") + "'"
