"""The Kafka Connect worker of the local stack (``stack up --with connect``): Apache Kafka's own
``connect-runtime`` (the same release as the broker, already in the stack's jar cache) in
distributed mode, its internal topics ``<connect_group>.configs|offsets|status`` on our broker,
REST API on ``stack.host:services.connect_port``.

Plugins (``plugin.path``, both cached under ``<stack.cache_dir>/connect-plugins``):

- ``debezium-jdbc-<v>``: Debezium's JDBC sink connector and the PostgreSQL JDBC driver, resolved
  with Maven from Maven Central and verified by a SHA-1 manifest like the Kafka jars;
- ``mystocks-converter-<hash>``: ``mystocks.connect.ManifestAvroConverter`` (``deploy/connect/converter``),
  built with Maven from the repository's source (the directory name carries the source's hash, so
  a changed converter is rebuilt). It decodes our Confluent-framed Avro values with ids from
  ``mystocks_gpu/schemas/manifest.json`` (or ``schema_registry.url`` when set). No converter on
  Maven Central reads this format on its own: Confluent's AvroConverter is not published there, and
  Apicurio's needs an Apicurio registry (its own REST API) that the stack does not run.

Keys are strings (``StringConverter``: job ids, symbols). Connectors are managed with
``mystocks-gpu connect ...`` (:mod:`connect_client`).
"""

from __future__ import annotations

import hashlib
import shutil
import signal
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from mystocks_gpu.infra.config import Settings
from mystocks_gpu.infra.exceptions import StackError
from mystocks_gpu.infra.stack_process import (
    REPO_ROOT,
    ManagedServer,
    StackLike,
    deploy_path,
    dir_lock,
    jars_problem,
    maven,
    maven_repo,
    publish_jars,
)

_PLUGINS_POM = Path(__file__).with_name("connect") / "plugins.pom.xml"
SCHEMA_MANIFEST = REPO_ROOT / "mystocks_gpu" / "schemas" / "manifest.json"
CONVERTER_CLASS = "mystocks.connect.ManifestAvroConverter"
#: version of how the JDBC plugin directory is made (part of its cache name: a change resolves it again)
_RECIPE = 2
JDBC_SINK_CLASS = "io.debezium.connector.jdbc.JdbcSinkConnector"


def _source_hash(root: Path) -> str:
    h = hashlib.sha1()
    for p in sorted(root.rglob("*")):
        if p.is_file() and "target" not in p.relative_to(root).parts:
            h.update(str(p.relative_to(root)).encode() + b"\0" + p.read_bytes())
    return h.hexdigest()[:12]


_SASL_MODULES = {"PLAIN": "org.apache.kafka.common.security.plain.PlainLoginModule",
                 "SCRAM-SHA-256": "org.apache.kafka.common.security.scram.ScramLoginModule",
                 "SCRAM-SHA-512": "org.apache.kafka.common.security.scram.ScramLoginModule"}


def java_security(security: Mapping[str, str]) -> dict[str, str]:
    """``kafka.security`` (librdkafka properties) as Java client properties: the protocol, SASL
    PLAIN/SCRAM credentials as a JAAS line, PEM files for TLS (CA, client certificate and key).
    A property with no Java counterpart here is a :class:`StackError` (never silently dropped)."""
    out: dict[str, str] = {}
    sec = dict(security)
    if "security.protocol" in sec:
        out["security.protocol"] = sec.pop("security.protocol").upper()
    mech = sec.pop("sasl.mechanism", sec.pop("sasl.mechanisms", None))
    user, pw = sec.pop("sasl.username", None), sec.pop("sasl.password", None)
    if mech:
        mech = mech.upper()
        if mech not in _SASL_MODULES:
            raise StackError(f"kafka.security sasl.mechanism {mech}: the Connect worker supports {', '.join(_SASL_MODULES)}")
        out["sasl.mechanism"] = mech
        esc = lambda v: (v or "").replace("\\", "\\\\").replace('"', '\\"')  # noqa: E731
        out["sasl.jaas.config"] = f'{_SASL_MODULES[mech]} required username="{esc(user)}" password="{esc(pw)}";'
    if "ssl.ca.location" in sec:
        out["ssl.truststore.type"] = "PEM"
        out["ssl.truststore.location"] = sec.pop("ssl.ca.location")
    if "ssl.certificate.location" in sec or "ssl.key.location" in sec:
        cert, key = sec.pop("ssl.certificate.location", None), sec.pop("ssl.key.location", None)
        if not (cert and key):
            raise StackError("kafka.security: ssl.certificate.location and ssl.key.location go together")
        out["ssl.keystore.type"] = "PEM"
        out["ssl.keystore.certificate.chain"] = Path(cert).read_text()
        out["ssl.keystore.key"] = Path(key).read_text()
    if sec.pop("ssl.endpoint.identification.algorithm", "https") in ("none", ""):
        out["ssl.endpoint.identification.algorithm"] = ""
    if sec:
        raise StackError(f"kafka.security: {', '.join(sorted(sec))} cannot be passed to the Connect worker")
    return out


def _prop(value: str) -> str:
    """A value in Java ``.properties`` syntax (backslashes and newlines escaped)."""
    return value.replace("\\", "\\\\").replace("\n", "\\n")


class ConnectWorker:
    """Plugins, configuration, start and stop of the stack's Connect worker."""

    def __init__(self, stack: StackLike, settings: Settings) -> None:
        self.stack = stack
        self.settings = settings
        self.cfg = settings.services
        self.dir = stack.home / "connect"
        self.props = self.dir / "worker.properties"
        #: secrets the connectors read through the worker's FileConfigProvider
        self.secrets = self.dir / "secrets.properties"
        self.plugins = Path(stack.cfg.cache_dir).expanduser() / "connect-plugins"
        self.server = ManagedServer("connect", stack.home, str(self.props), stack.cfg.host, self.cfg.connect_port)

    @property
    def url(self) -> str:
        """Base URL of the worker's REST API."""
        return f"http://{self.server.host}:{self.cfg.connect_port}"

    # ---- plugins -------------------------------------------------------------------------
    def jdbc_plugin(self) -> Path:
        """The Debezium JDBC sink + PostgreSQL driver plugin directory, resolved when absent or damaged."""
        dest = self.plugins / f"debezium-jdbc-{self.cfg.debezium_version}-pg-{self.cfg.postgres_jdbc_version}-r{_RECIPE}"
        with dir_lock(self.plugins):
            if jars_problem(dest) is None:
                return dest
            work = self.plugins / f"resolve-{dest.name}"
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir(parents=True)
            pom = work / "pom.xml"
            pom.write_text(_PLUGINS_POM.read_text().replace("@DEBEZIUM_VERSION@", self.cfg.debezium_version)
                           .replace("@POSTGRES_JDBC_VERSION@", self.cfg.postgres_jdbc_version))
            out = work / "libs"
            maven(["-f", str(pom), "dependency:copy-dependencies", f"-DoutputDirectory={out}", "-DincludeScope=runtime",
                   # Kafka, SLF4J and Jackson come from the worker's classpath: a second Jackson in the
                   # plugin breaks Jackson's module ServiceLoader ("Jdk8Module not a subtype")
                   "-DexcludeGroupIds=org.apache.kafka,org.slf4j,com.fasterxml.jackson.core",
                   # the drivers of other databases Debezium's sink brings along
                   "-DexcludeArtifactIds=mariadb-java-client,mssql-jdbc,mysql-connector-j,ojdbc11"],
                  f"resolves Debezium's JDBC sink {self.cfg.debezium_version} and the PostgreSQL driver",
                  maven_repo(self.stack.cfg.cache_dir))
            if not any(out.glob("*.jar")):
                raise StackError(f"Maven resolved no jar for the JDBC sink plugin into {out}")
            publish_jars(out, dest)
            shutil.rmtree(work, ignore_errors=True)
            return dest

    def converter_plugin(self) -> Path:
        """The converter plugin directory, built with Maven from ``deploy/connect/converter`` when
        its source changed (or the build is absent or damaged)."""
        src = deploy_path("connect", "converter")
        dest = self.plugins / f"mystocks-converter-{_source_hash(src)}"
        with dir_lock(self.plugins):
            if jars_problem(dest) is None:
                return dest
            work = self.plugins / f"build-{dest.name}"
            shutil.rmtree(work, ignore_errors=True)
            shutil.copytree(src, work, ignore=shutil.ignore_patterns("target"))
            out = work / "target" / "plugin"
            maven(["-f", str(work / "pom.xml"), "resources:resources", "compiler:compile", "jar:jar",
                   "dependency:copy-dependencies", "-DincludeScope=runtime", f"-DoutputDirectory={out}"],
                  "builds the Connect converter (deploy/connect/converter)", maven_repo(self.stack.cfg.cache_dir))
            for jar in (work / "target").glob("*.jar"):
                shutil.copy2(jar, out / jar.name)
            publish_jars(out, dest)
            shutil.rmtree(work, ignore_errors=True)
            return dest

    # ---- worker --------------------------------------------------------------------------
    def _write_props(self, plugin_dirs: list[Path]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        g = self.cfg.connect_group
        props = {
            "bootstrap.servers": self.settings.kafka.bootstrap_servers,
            "group.id": g,
            "config.storage.topic": f"{g}.configs", "config.storage.replication.factor": "1",
            "offset.storage.topic": f"{g}.offsets", "offset.storage.replication.factor": "1",
            "offset.storage.partitions": "5",
            "status.storage.topic": f"{g}.status", "status.storage.replication.factor": "1",
            "status.storage.partitions": "1",
            "listeners": self.url, "rest.advertised.host.name": self.server.host,
            "rest.advertised.port": str(self.cfg.connect_port),
            # a directory of plugin directories (one class loader per plugin, not per jar); plugins
            # are found through their ServiceLoader manifests (no reflective scan of every jar)
            "plugin.path": str(self._plugin_links(plugin_dirs)),
            "plugin.discovery": "service_load",
            "key.converter": "org.apache.kafka.connect.storage.StringConverter",
            "value.converter": CONVERTER_CLASS,
            "value.converter.manifest": str(SCHEMA_MANIFEST),
            "offset.flush.interval.ms": "1000",
            # connector configs name secrets as ${file:<secrets>:key}, never in clear (see connect_client)
            "config.providers": "file",
            "config.providers.file.class": "org.apache.kafka.common.config.provider.FileConfigProvider",
            # a worker killed and restarted rejoins quickly (the broker's minimum session is 6 s)
            "session.timeout.ms": "6000", "heartbeat.interval.ms": "2000",
            "scheduled.rebalance.max.delay.ms": "0",
            "consumer.session.timeout.ms": "6000", "consumer.heartbeat.interval.ms": "2000",
        }
        # the worker's own clients and its tasks' clients (prefixed) use the same credentials
        for k, v in java_security(self.settings.kafka.security).items():
            for prefix in ("", "producer.", "consumer.", "admin."):
                props[prefix + k] = v
        reg = self.settings.schema_registry
        if reg.url:
            props["value.converter.registry.url"] = reg.url
            if reg.basic_auth_user:
                props["value.converter.registry.basic.auth.user"] = reg.basic_auth_user
                props["value.converter.registry.basic.auth.password"] = reg.basic_auth_password or ""
        self.props.write_text("".join(f"{k}={_prop(v)}\n" for k, v in props.items()))
        self.props.chmod(0o600)
        self.secrets.write_text(f"postgres_password={self.cfg.postgres_password}\n")
        self.secrets.chmod(0o600)

    def _plugin_links(self, plugin_dirs: list[Path]) -> Path:
        """``<home>/connect/plugins/<name>`` -> each cached plugin directory."""
        links = self.dir / "plugins"
        shutil.rmtree(links, ignore_errors=True)
        links.mkdir(parents=True)
        for d in plugin_dirs:
            (links / d.name).symlink_to(d, target_is_directory=True)
        return links

    def start(self, timeout_s: float = 240) -> int:
        """Start the worker if not running (idempotent) and wait until its REST API lists the JDBC
        sink; returns its pid. Needs the broker up."""
        pid = self.spawn()
        self.server.wait(pid, self._ready, timeout_s, "the Kafka Connect worker")
        return pid

    def spawn(self) -> int:
        """Start the worker process if not running (plugins fetched or built first) without waiting
        for it to come up (:meth:`start` waits); returns its pid."""
        pid = self.server.pid()
        if pid is None:
            self.server.check_port_free("services.connect_port")
            self.stack.fetch_kafka()
            plugins = [self.jdbc_plugin(), self.converter_plugin()]
            self._write_props(plugins)
            log4j = self.dir / "log4j2.properties"
            log4j.write_text((Path(__file__).with_name("kafka") / "log4j2.properties").read_text()
                             + "logger.reflections.name = org.reflections\nlogger.reflections.level = ERROR\n")
            cmd = self.stack._java_cmd("org.apache.kafka.connect.cli.ConnectDistributed", str(self.props),
                                       heap_mb=self.cfg.connect_heap_mb)
            cmd = [c if not c.startswith("-Dlog4j2.configurationFile=") else f"-Dlog4j2.configurationFile={log4j}"
                   for c in cmd]
            pid = self.server.spawn(cmd)
        return pid

    def _ready(self) -> bool:
        with urllib.request.urlopen(f"{self.url}/connector-plugins", timeout=5) as resp:
            return JDBC_SINK_CLASS in resp.read().decode()

    def stop(self, hard: bool = False, timeout_s: float = 60) -> bool:
        """Stop the worker: SIGTERM (finishes and commits its tasks' offsets) or SIGKILL when ``hard``."""
        return self.server.stop(signal.SIGKILL if hard else signal.SIGTERM, timeout_s)
