"""Prometheus for the local stack (``stack up --with prometheus``): Debian's ``prometheus`` package,
listening on ``stack.host:services.prometheus_port``, data in ``<stack home>/prometheus``.

It scrapes every ``services.scrape_interval_s`` the static ``services.scrape_targets`` (job
``mystocks``) and every file_sd target file ``<stack home>/prometheus/targets/*.json`` (job
``mystocks-sd``; :meth:`PrometheusServer.add_targets` writes one, picked up without a restart), and
evaluates the alert rules of ``deploy/prometheus/rules.yml``. :meth:`PrometheusServer.query` asks
its HTTP API (``/api/v1/query``).
"""

from __future__ import annotations

import json
import shutil
import signal
import urllib.parse
import urllib.request
from typing import Any

from mystocks_gpu.infra.exceptions import StackError
from mystocks_gpu.infra.services_config import ServicesConfig
from mystocks_gpu.infra.stack_process import ManagedServer, StackLike, deploy_path

RULES = ("prometheus", "rules.yml")


def prometheus_bin(tool: str = "prometheus") -> str:
    """Path of ``prometheus`` or ``promtool``; :class:`StackError` naming the apt package."""
    found = shutil.which(tool)
    if found is None:
        raise StackError(f"{tool} is missing (apt-get install prometheus; `make install` does it)")
    return found


class PrometheusServer:
    """Configuration, start, stop and queries of the stack's Prometheus."""

    def __init__(self, stack: StackLike, cfg: ServicesConfig) -> None:
        self.cfg = cfg
        self.dir = stack.home / "prometheus"
        self.config = self.dir / "prometheus.yml"
        self.targets_dir = self.dir / "targets"
        self.server = ManagedServer("prometheus", stack.home, str(self.config), stack.cfg.host, cfg.prometheus_port)

    @property
    def url(self) -> str:
        """Base URL of the HTTP API."""
        return f"http://{self.server.host}:{self.cfg.prometheus_port}"

    def write_config(self) -> None:
        """``prometheus.yml``: intervals, the rules file, static and file_sd scrape jobs."""
        self.targets_dir.mkdir(parents=True, exist_ok=True)
        iv = f"{self.cfg.scrape_interval_s:g}s"
        conf: dict[str, Any] = {
            "global": {"scrape_interval": iv, "evaluation_interval": iv, "scrape_timeout": iv},
            "rule_files": [str(deploy_path(*RULES))],
            "scrape_configs": [
                {"job_name": "prometheus", "static_configs": [{"targets": [f"{self.server.host}:{self.cfg.prometheus_port}"]}]},
                {"job_name": "mystocks", "static_configs": [{"targets": self.cfg.targets()}]},
                {"job_name": "mystocks-sd", "file_sd_configs": [{"files": [str(self.targets_dir / "*.json")],
                                                                  "refresh_interval": "1s"}]},
            ],
        }
        self.config.write_text(json.dumps(conf, indent=2) + "\n")  # JSON is YAML

    def add_targets(self, name: str, targets: list[str], labels: dict[str, str] | None = None) -> None:
        """Scrape ``targets`` (``host:port``) from now on (file_sd ``targets/<name>.json``)."""
        self.targets_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.targets_dir / f".{name}.json.tmp"
        tmp.write_text(json.dumps([{"targets": targets, "labels": labels or {}}]))
        tmp.rename(self.targets_dir / f"{name}.json")

    def start(self, timeout_s: float = 120) -> int:
        """Start the server if not running (idempotent); returns its pid once ``/-/ready`` answers."""
        pid = self.server.pid()
        if pid is None:
            self.server.check_port_free("services.prometheus_port")
            self.write_config()
            pid = self.server.spawn([
                prometheus_bin(), f"--config.file={self.config}", f"--storage.tsdb.path={self.dir / 'data'}",
                f"--web.listen-address={self.server.host}:{self.cfg.prometheus_port}", "--web.enable-lifecycle",
                "--storage.tsdb.retention.time=2d", "--log.level=warn"])
        self.server.wait(pid, self._ready, timeout_s, "Prometheus")
        return pid

    def _ready(self) -> bool:
        with urllib.request.urlopen(f"{self.url}/-/ready", timeout=5) as resp:
            return resp.status == 200

    def stop(self, timeout_s: float = 30) -> bool:
        """SIGTERM (Prometheus flushes its head block and exits)."""
        return self.server.stop(signal.SIGTERM, timeout_s)

    def api(self, path: str, **params: str) -> Any:
        """``GET /api/v1/<path>?params`` -> the ``data`` member; :class:`StackError` on an error answer."""
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:
                body = json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            body = json.loads(exc.read() or b"{}")
        if body.get("status") != "success":
            raise StackError(f"Prometheus {path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, promql: str) -> list[dict[str, Any]]:
        """Instant query: the result vector (``[{"metric": {...}, "value": [ts, "v"]}, ...]``)."""
        data = self.api("query", query=promql)
        return list(data["result"]) if data["resultType"] in ("vector", "matrix") else [{"metric": {}, "value": data["result"]}]
