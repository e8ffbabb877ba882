"""The SECURE local stack (``mystocks-gpu stack up --secure``): the same single-node Kafka + Redis as
:class:`~mystocks_gpu.infra.stack.LocalStack`, encrypted, authenticated and authorised.

* **TLS**: a local CA and a server certificate (:mod:`.tls_certs`) in ``<home>/secure/pki``.
* **Kafka**: one SASL_SSL listener (SCRAM-SHA-512 over TLS) for clients and the broker itself, the
  controller listener on mutual TLS, KRaft's ``StandardAuthorizer`` with
  ``allow.everyone.if.no.acl.found=false``: a principal may do only what its ACLs say. The SCRAM
  users of :data:`ROLES` (and ``broker``/``admin``, the super users) are created when the storage is
  formatted (``kafka-storage format --add-scram``); ACLs are applied by the admin at each ``up``
  (idempotent). More principals: :meth:`SecureStack.add_principal` (SCRAM upsert + ACLs of a role).
* **Redis**: TLS only (``tls-port``, plain port 0), ``default`` user = the admin password, one ACL
  user per principal (job plane: every command but ``@dangerous`` ones; others: connection only).
* **Credentials**: random, in ``<home>/secure/credentials.json`` (0600), never logged. Each
  principal gets ``<home>/secure/principals/<name>.env`` (0600) with the ``MYSTOCKS_*`` variables
  that make every command of this package connect as it (``mystocks-gpu stack env NAME --secure``).

Roles (what each principal may do; ``md.*`` = market data):

===========  ==================================================================================
stream       read ``md.*``, ``orders.parent``; write the processors' outputs (``features.*``,
             ``agg.*``, ``md.bars.1s``/``1m``, ``orders.schedule``/``scored``) and the DLQs of
             their inputs; changelogs and transactions under ``mystocks.``
jobworker    read its dispatch topic (``jobs.dispatch.*``) and history (``md.*``, ``features.*``,
             ``execution.params``); write ``jobs.events`` and ``results.*``
control      read ``cmd.jobs``, ``jobs.events`` (and ``md.ticks``/``features.ticks`` for the
             WebSocket); write ``job.status``, ``alerts``, ``jobs.dispatch.*``, ``cmd.jobs`` (HTTP
             submissions), ``cmd.jobs.dlq``; its Faust topics under ``mystocks-``
client       write ``cmd.jobs``, ``orders.parent``; read ``results.*``, ``job.status``, ``alerts``,
             ``orders.schedule``/``scored``
ingest       write market data (``md.*``): the only principal besides the admin that may; and
             the execution parameters estimated from it (``orders.parent``, ``execution.params``)
===========  ==================================================================================

Every role may describe topics and their configs and use consumer groups named ``mystocks*``.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mystocks_gpu.infra.config import StackConfig
from mystocks_gpu.infra.exceptions import StackError
from mystocks_gpu.infra.stack import LocalStack
from mystocks_gpu.infra.stack_process import tail
from mystocks_gpu.infra.tls_certs import Pki, ensure_pki

log = logging.getLogger(__name__)
SCRAM = "SCRAM-SHA-512"
SCRAM_ITERATIONS = 8192
#: super users of the broker (full access; never given to a component)
SUPER_USERS = ("broker", "admin")

# (resource type, pattern type, name, operations); R = READ, W = WRITE, C = CREATE, D = DESCRIBE
Grant = tuple[str, str, str, tuple[str, ...]]
_COMMON: tuple[Grant, ...] = (
    ("TOPIC", "LITERAL", "*", ("DESCRIBE", "DESCRIBE_CONFIGS")),
    ("GROUP", "PREFIXED", "mystocks", ("READ", "DESCRIBE")),
)
_MD_DLQS = ("md.ticks.dlq", "md.trades.dlq", "md.quotes.dlq", "md.bars.1s.dlq", "md.bars.1m.dlq", "md.bars.1d.dlq")
#: role -> its grants (see the module docstring)
ROLES: dict[str, tuple[Grant, ...]] = {
    "stream": (
        ("TOPIC", "PREFIXED", "md.", ("READ",)),
        ("TOPIC", "PREFIXED", "features.", ("READ", "WRITE")),
        ("TOPIC", "PREFIXED", "agg.", ("READ", "WRITE")),
        ("TOPIC", "LITERAL", "md.bars.1s", ("WRITE",)),
        ("TOPIC", "LITERAL", "md.bars.1m", ("WRITE",)),
        *(("TOPIC", "LITERAL", d, ("WRITE",)) for d in _MD_DLQS),
        ("TOPIC", "LITERAL", "orders.parent", ("READ",)),  # the execution processor
        ("TOPIC", "LITERAL", "orders.schedule", ("WRITE",)),
        ("TOPIC", "LITERAL", "orders.scored", ("WRITE",)),
        ("TOPIC", "LITERAL", "orders.parent.dlq", ("WRITE",)),
        ("TOPIC", "PREFIXED", "mystocks.", ("READ", "WRITE", "CREATE")),
        ("TRANSACTIONAL_ID", "PREFIXED", "mystocks.", ("WRITE", "DESCRIBE")),
    ),
    "jobworker": (
        ("TOPIC", "PREFIXED", "jobs.dispatch.", ("READ", "CREATE")),
        ("TOPIC", "PREFIXED", "md.", ("READ",)),
        ("TOPIC", "PREFIXED", "features.", ("READ",)),
        ("TOPIC", "LITERAL", "execution.params", ("READ",)),
        ("TOPIC", "LITERAL", "jobs.events", ("WRITE",)),
        ("TOPIC", "PREFIXED", "results.", ("WRITE",)),
    ),
    "control": (
        ("TOPIC", "LITERAL", "cmd.jobs", ("READ", "WRITE", "CREATE")),
        ("TOPIC", "LITERAL", "cmd.jobs.dlq", ("WRITE", "CREATE")),
        ("TOPIC", "LITERAL", "jobs.events", ("READ", "CREATE")),
        ("TOPIC", "LITERAL", "job.status", ("WRITE", "CREATE")),
        ("TOPIC", "LITERAL", "alerts", ("WRITE", "CREATE")),
        ("TOPIC", "PREFIXED", "jobs.dispatch.", ("WRITE", "CREATE")),
        ("TOPIC", "LITERAL", "md.ticks", ("READ",)),
        ("TOPIC", "LITERAL", "features.ticks", ("READ",)),
        ("TOPIC", "PREFIXED", "mystocks-", ("READ", "WRITE", "CREATE")),
        ("TRANSACTIONAL_ID", "PREFIXED", "mystocks-", ("WRITE", "DESCRIBE")),
    ),
    "client": (
        ("TOPIC", "LITERAL", "cmd.jobs", ("WRITE",)),
        ("TOPIC", "PREFIXED", "results.", ("READ",)),
        ("TOPIC", "LITERAL", "job.status", ("READ",)),
        ("TOPIC", "LITERAL", "alerts", ("READ",)),
        ("TOPIC", "LITERAL", "orders.parent", ("WRITE",)),
        ("TOPIC", "LITERAL", "orders.schedule", ("READ",)),
        ("TOPIC", "LITERAL", "orders.scored", ("READ",)),
    ),
    "ingest": (
        ("TOPIC", "PREFIXED", "md.", ("READ", "WRITE")),
        # `execution params`: estimated from md.* history, broadcast in orders.parent + execution.params
        ("TOPIC", "LITERAL", "orders.parent", ("WRITE",)),
        ("TOPIC", "LITERAL", "execution.params", ("WRITE",)),
        ("TRANSACTIONAL_ID", "PREFIXED", "mystocks-params-", ("WRITE", "DESCRIBE")),
    ),
}
#: Redis ACL rules per role (job plane: every command but the dangerous ones; others: connect only)
_REDIS_RULES = {"control": "~* &* +@all -@dangerous", "jobworker": "~* &* +@all -@dangerous"}
_REDIS_DEFAULT_RULES = "-@all +@connection"
_NAME_OK = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


@dataclass(frozen=True)
class Principal:
    """A component identity: its SCRAM user (= Redis user) name, role and passwords."""

    name: str
    role: str
    kafka_password: str
    redis_password: str


def _check_name(name: str) -> None:
    if not name or len(name) > 64 or not set(name) <= _NAME_OK:
        raise StackError(f"principal name must be 1-64 characters of A-Z a-z 0-9 - _ ., got {name!r}")


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(path, 0o600)


class SecureStack(LocalStack):
    """:class:`LocalStack` with TLS, SCRAM, ACLs and Redis ACL users (see the module docstring)."""

    secure = True

    def __init__(self, cfg: StackConfig) -> None:
        super().__init__(cfg)
        self.secure_dir = self.home / "secure"
        self._pki: Pki | None = None

    # ---- credentials ---------------------------------------------------------------------
    @property
    def credentials_file(self) -> Path:
        return self.secure_dir / "credentials.json"

    def _load_credentials(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads(self.credentials_file.read_text())
            return data
        except (OSError, ValueError):
            return {}

    def credentials(self) -> dict[str, Any]:
        """``{"admin": {kafka, redis}, "broker": {kafka}, "principals": {name: {role, kafka, redis}}}``,
        created with random passwords (and the standard principals, one per role) on first use."""
        data = self._load_credentials()
        if data:
            return data
        self.secure_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.secure_dir, 0o700)

        def pw() -> str:
            return secrets.token_urlsafe(24)

        data = {"admin": {"kafka": pw(), "redis": pw()}, "broker": {"kafka": pw()},
                "principals": {role: {"role": role, "kafka": pw(), "redis": pw()} for role in ROLES}}
        _write_private(self.credentials_file, json.dumps(data, indent=1))
        return data

    def principals(self) -> list[Principal]:
        """Every principal of this stack (the standard ones, one per role, and added ones)."""
        return [Principal(n, p["role"], p["kafka"], p["redis"]) for n, p in self.credentials()["principals"].items()]

    def principal(self, name: str) -> Principal:
        """One principal; :class:`StackError` naming the known ones when absent."""
        for p in self.principals():
            if p.name == name:
                return p
        known = ", ".join(p.name for p in self.principals())
        raise StackError(f"no principal {name!r} in this secure stack (known: {known}, and admin)")

    @property
    def pki(self) -> Pki:
        """The stack's CA and server certificate (created on first use)."""
        if self._pki is None:
            self._pki = ensure_pki(self.secure_dir / "pki", self.cfg.host)
        return self._pki

    # ---- client settings -------------------------------------------------------------------
    def kafka_security(self, user: str, password: str) -> dict[str, str]:
        """librdkafka properties (``kafka.security``) of a SCRAM user of this stack."""
        return {"security.protocol": "SASL_SSL", "sasl.mechanism": SCRAM, "sasl.username": user,
                "sasl.password": password, "ssl.ca.location": str(self.pki.ca)}

    def redis_user_url(self, user: str, password: str) -> str:
        """``rediss://user:password@host:port/0?ssl_ca_certs=CA`` (TLS, verified against the stack's CA)."""
        return f"rediss://{user}:{password}@{self.cfg.host}:{self.cfg.redis_port}/0?ssl_ca_certs={self.pki.ca}"

    @property
    def redis_url(self) -> str:
        """The admin's Redis URL (``default`` user)."""
        return self.redis_user_url("default", self.credentials()["admin"]["redis"])

    def env(self, name: str) -> dict[str, str]:
        """``MYSTOCKS_*`` variables that make a process connect as principal ``name`` (``admin``: the
        super user) to this stack: bootstrap, SASL_SSL/SCRAM credentials, CA, Redis URL."""
        creds = self.credentials()
        if name == "admin":
            kafka_pw, redis_url = creds["admin"]["kafka"], self.redis_url
        else:
            p = self.principal(name)
            kafka_pw, redis_url = p.kafka_password, self.redis_user_url(p.name, p.redis_password)
        sec = self.kafka_security(name, kafka_pw)
        env = {"MYSTOCKS_KAFKA__BOOTSTRAP_SERVERS": self.bootstrap, "MYSTOCKS_REDIS__URL": redis_url}
        env.update({"MYSTOCKS_KAFKA__SECURITY__" + k.replace(".", "_").upper(): v for k, v in sec.items()})
        return env

    def write_env_files(self) -> Path:
        """``<home>/secure/principals/<name>.env`` (0600) for admin and every principal; returns the directory."""
        d = self.secure_dir / "principals"
        d.mkdir(parents=True, exist_ok=True)
        os.chmod(d, 0o700)
        for name in ["admin", *(p.name for p in self.principals())]:
            _write_private(d / f"{name}.env", "".join(f"{k}={v}\n" for k, v in sorted(self.env(name).items())))
        return d

    def admin_client_conf(self) -> dict[str, Any]:
        return {"bootstrap.servers": self.bootstrap,
                **self.kafka_security("admin", self.credentials()["admin"]["kafka"])}

    # ---- Kafka -----------------------------------------------------------------------------
    def _server_properties(self) -> Path:
        props = self.kafka_dir / "server.properties"
        pki, creds = self.pki, self.credentials()
        _write_private(props, self._broker_properties(
            "server-secure.properties", BROKER_PASSWORD=creds["broker"]["kafka"], KEYSTORE=str(pki.keystore),
            KEYSTORE_PASSWORD=pki.keystore_password, CA=str(pki.ca)))
        return props

    def _format_storage(self, props: Path) -> None:
        if (self.kafka_dir / "data" / "meta.properties").exists():
            return
        creds = self.credentials()
        users = {"broker": creds["broker"]["kafka"], "admin": creds["admin"]["kafka"],
                 **{p.name: p.kafka_password for p in self.principals()}}
        args = ["format", "-t", uuid.uuid4().hex[:22], "-c", str(props)]
        for user, password in users.items():
            args += ["--add-scram", f"{SCRAM}=[name={user},iterations={SCRAM_ITERATIONS},password={password}]"]
        proc = self._run_java("kafka.tools.StorageTool", args)
        if proc.returncode != 0:  # the output may echo the arguments: never show passwords
            out = (proc.stdout + proc.stderr)[-2000:]
            for pw in users.values():
                out = out.replace(pw, "***")
            raise StackError(f"formatting Kafka storage (with SCRAM users) failed:\n{out}")

    def _run_java(self, main: str, args: list[str]) -> Any:
        import subprocess

        return subprocess.run(self._java_cmd(main, *args), capture_output=True, text=True)

    def start_kafka(self) -> int:
        pid = super().start_kafka()
        self.apply_acls()
        return pid

    # ---- ACLs and principals ----------------------------------------------------------------
    def _admin(self) -> Any:
        from confluent_kafka.admin import AdminClient

        return AdminClient({**self.admin_client_conf(), "log_level": 0, "socket.connection.setup.timeout.ms": 5000})

    @staticmethod
    def acl_bindings(name: str, role: str) -> list[Any]:
        """The ACL bindings of principal ``User:name`` with ``role``."""
        from confluent_kafka.admin import (
            AclBinding,
            AclOperation,
            AclPermissionType,
            ResourcePatternType,
            ResourceType,
        )

        if role not in ROLES:
            raise StackError(f"unknown role {role!r}; roles: {', '.join(ROLES)}")
        out = []
        for rtype, pattern, rname, ops in (*_COMMON, *ROLES[role]):
            for op in ops:
                out.append(AclBinding(ResourceType[rtype], rname, ResourcePatternType[pattern], f"User:{name}", "*",
                                      AclOperation[op], AclPermissionType.ALLOW))
        return out

    def apply_acls(self, principals: Iterable[Principal] | None = None) -> int:
        """Create (idempotently) the ACLs of every principal (or of ``principals``); returns how many."""
        bindings = [b for p in (principals if principals is not None else self.principals())
                    for b in self.acl_bindings(p.name, p.role)]
        admin = self._admin()
        deadline = time.monotonic() + 60
        while True:
            try:
                for fut in admin.create_acls(bindings, request_timeout=15).values():
                    fut.result()
                return len(bindings)
            except Exception as exc:  # noqa: BLE001 - the authorizer may still be loading just after start
                if time.monotonic() > deadline:
                    raise StackError(f"creating the stack's ACLs failed: {exc}") from None
                time.sleep(1.0)

    def add_principal(self, name: str, role: str) -> Principal:
        """A new principal with ``role``: SCRAM user on the running broker, its ACLs, a Redis ACL user
        (on the next Redis start; at once via ``ACL SETUSER`` when Redis runs) and its env file."""
        from confluent_kafka.admin import (
            ScramCredentialInfo,
            ScramMechanism,
            UserScramCredentialUpsertion,
        )

        _check_name(name)
        if name in SUPER_USERS or name == "default":
            raise StackError(f"{name} is reserved")
        if role not in ROLES:
            raise StackError(f"unknown role {role!r}; roles: {', '.join(ROLES)}")
        data = self.credentials()
        entry = data["principals"].get(name) or {"kafka": secrets.token_urlsafe(24), "redis": secrets.token_urlsafe(24)}
        entry["role"] = role
        p = Principal(name, role, entry["kafka"], entry["redis"])
        up = UserScramCredentialUpsertion(name, ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, SCRAM_ITERATIONS),
                                          p.kafka_password.encode(), secrets.token_bytes(16))
        for fut in self._admin().alter_user_scram_credentials([up], request_timeout=15).values():
            fut.result()
        self.apply_acls([p])
        data["principals"][name] = entry
        _write_private(self.credentials_file, json.dumps(data, indent=1))
        self._write_redis_conf()
        if self._read_pid("redis") is not None:
            self._redis_client().execute_command("ACL", "SETUSER", name, "reset", "on", f">{p.redis_password}",
                                                 *_REDIS_RULES.get(role, _REDIS_DEFAULT_RULES).split())
        self.write_env_files()
        return p

    # ---- Redis -----------------------------------------------------------------------------
    def _write_redis_conf(self) -> Path:
        pki, creds = self.pki, self.credentials()
        self.redis_dir.mkdir(parents=True, exist_ok=True)
        lines = [f"bind {self.cfg.host}", "port 0", f"tls-port {self.cfg.redis_port}",
                 f"tls-cert-file {pki.cert}", f"tls-key-file {pki.key}", f"tls-ca-cert-file {pki.ca}",
                 "tls-auth-clients no", "tls-protocols \"TLSv1.2 TLSv1.3\"", "save \"\"", "appendonly no",
                 f"dir {self.redis_dir}", f"logfile {self.redis_dir / 'redis.log'}", "daemonize no",
                 "protected-mode yes", f"user default on >{creds['admin']['redis']} ~* &* +@all"]
        for p in self.principals():
            lines.append(f"user {p.name} on >{p.redis_password} {_REDIS_RULES.get(p.role, _REDIS_DEFAULT_RULES)}")
        conf = self.redis_dir / "redis.conf"
        _write_private(conf, "\n".join(lines) + "\n")
        return conf

    def _redis_command(self, server: str, log_file: Path) -> list[str]:
        return [server, str(self._write_redis_conf())]

    def _redis_client(self) -> Any:
        import redis

        return redis.Redis.from_url(self.redis_url, socket_connect_timeout=1)

    def _redis_log_tail(self) -> str:
        return tail(self.redis_dir / "redis.log")

    # ---- lifecycle -------------------------------------------------------------------------
    def up(self) -> Any:
        self.home.mkdir(parents=True, exist_ok=True)
        self.credentials()
        self.pki  # noqa: B018 - created before either server needs it
        out = super().up()
        self.write_env_files()
        return out


def open_stack(cfg: StackConfig, secure: bool | None = None) -> LocalStack:
    """The stack of ``cfg.home``: secure when ``secure`` is True, or when None and the home already
    holds a secure stack's credentials; otherwise the plain :class:`LocalStack`."""
    if secure is None:
        secure = (Path(cfg.home).expanduser().resolve() / "secure" / "credentials.json").exists()
    return SecureStack(cfg) if secure else LocalStack(cfg)
