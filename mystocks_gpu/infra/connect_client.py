"""The Kafka Connect REST API (``mystocks-gpu connect ...``) and the connector configs kept in the
repository (``deploy/connect/connectors/<name>.json``: ``{"name", "config"}``).

A config's placeholders are filled from the settings: ``@POSTGRES_URL@`` (JDBC URL of
``services.postgres_*`` on ``stack.host``), ``@POSTGRES_USER@``, and ``@POSTGRES_PASSWORD@`` -- a
reference ``${file:<stack home>/connect/secrets.properties:postgres_password}`` resolved by the
worker's FileConfigProvider, ``@SCHEMA_MANIFEST@`` (the schema manifest a connector-level
converter reads), so the password is never stored in the Connect config topic nor
shown by ``GET /connectors``. ``--set key=value`` overrides any config key (e.g. another worker's
password reference such as ``${env:POSTGRES_PASSWORD}``).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from mystocks_gpu.exceptions import MyStocksError
from mystocks_gpu.infra.config import Settings
from mystocks_gpu.infra.stack_connect import SCHEMA_MANIFEST
from mystocks_gpu.infra.stack_process import REPO_ROOT

CONNECTORS_DIR = REPO_ROOT / "deploy" / "connect" / "connectors"


class ConnectError(MyStocksError):
    """The Connect REST API refused a request, or is unreachable, or a connector config is unknown."""

    exit_code = 2


def known_connectors(directory: Path = CONNECTORS_DIR) -> list[str]:
    """Names of the connector configs kept in the repository."""
    return sorted(p.stem for p in directory.glob("*.json"))


def connector_config(name: str, settings: Settings, overrides: dict[str, str] | None = None,
                     directory: Path = CONNECTORS_DIR) -> dict[str, str]:
    """The config of connector ``name`` with its placeholders filled and ``overrides`` applied."""
    path = directory / f"{name}.json"
    if not path.exists():
        raise ConnectError(f"no connector config {name!r} in {directory}; known: {', '.join(known_connectors(directory)) or 'none'}")
    doc = json.loads(path.read_text())
    sv, host = settings.services, settings.stack.host
    home = Path(settings.stack.home).expanduser().resolve()
    fill = {
        "@POSTGRES_URL@": f"jdbc:postgresql://{host}:{sv.postgres_port}/{sv.postgres_db}",
        "@POSTGRES_USER@": sv.postgres_user,
        "@POSTGRES_PASSWORD@": f"${{file:{home / 'connect' / 'secrets.properties'}:postgres_password}}",
        "@SCHEMA_MANIFEST@": str(SCHEMA_MANIFEST),
    }
    config = {}
    for k, v in doc["config"].items():
        for ph, value in fill.items():
            v = str(v).replace(ph, value)
        config[k] = v
    reg = settings.schema_registry
    if reg.url and "value.converter" in config:  # a connector-level converter does not inherit the worker's settings
        config["value.converter.registry.url"] = reg.url
    config.update(overrides or {})
    return config


class ConnectClient:
    """Requests to one Connect worker's REST API (``services.connect_url``)."""

    def __init__(self, url: str, timeout_s: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s

    @classmethod
    def from_settings(cls, settings: Settings) -> ConnectClient:
        """The client of the configured worker."""
        return cls(settings.services.connect_rest(settings.stack.host))

    def request(self, method: str, path: str, body: Any = None) -> Any:
        """One request; the decoded JSON answer (None for 204/empty). :class:`ConnectError` with
        the worker's message on an error status, or when nothing answers."""
        req = urllib.request.Request(f"{self.url}{path}", method=method,
                                     data=None if body is None else json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json", "Accept": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                raw = resp.read()
                return json.loads(raw) if raw else None
        except urllib.error.HTTPError as exc:
            try:
                msg = json.loads(exc.read()).get("message", "")
            except (ValueError, AttributeError):
                msg = ""
            raise ConnectError(f"Connect {method} {path}: HTTP {exc.code} {msg}".rstrip()) from None
        except (urllib.error.URLError, OSError) as exc:
            raise ConnectError(f"no Kafka Connect worker answers at {self.url} ({exc}); "
                               "start one with `mystocks-gpu stack up --with connect`") from None

    def put_config(self, name: str, config: dict[str, str]) -> dict[str, Any]:
        """Create or update connector ``name`` (``PUT /connectors/NAME/config``, idempotent)."""
        return dict(self.request("PUT", f"/connectors/{name}/config", config))

    def list(self) -> list[str]:
        """Names of the connectors on the worker."""
        return sorted(self.request("GET", "/connectors"))

    def status(self, name: str) -> dict[str, Any]:
        """``GET /connectors/NAME/status``: connector and task states (with traces of failures)."""
        return dict(self.request("GET", f"/connectors/{name}/status"))

    def delete(self, name: str) -> None:
        """Remove connector ``name`` (its committed offsets stay in the offsets topic)."""
        self.request("DELETE", f"/connectors/{name}")

    def config(self, name: str) -> dict[str, str]:
        """The connector's config as the worker holds it."""
        return dict(self.request("GET", f"/connectors/{name}/config"))
