"""Schema ids: the versioned manifest (default) or a Confluent-compatible Schema Registry.

Every process reads ``manifest.json`` beside this file, so producers and consumers agree on ids
without a server. A schema's id never changes and is never reused: editing an ``.avsc`` changes its
fingerprint, and ``python -m mystocks_gpu.schemas.schema_store --update`` appends a new id for it
(the old id stays readable). A test keeps manifest and files in step.
"""

from __future__ import annotations

import argparse
import base64
import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import fastavro
from fastavro.schema import fingerprint, to_parsing_canonical_form

from mystocks_gpu.infra.config import SchemaRegistryConfig, Settings
from mystocks_gpu.schemas.exceptions import SchemaError, UnknownSchemaId

SCHEMA_DIR = Path(__file__).with_name("avsc")
MANIFEST = Path(__file__).with_name("manifest.json")


@dataclass(frozen=True)
class SchemaInfo:
    """One schema: its registry id, full name, parsed form (for fastavro) and fingerprint."""

    id: int
    name: str
    parsed: Any
    raw: dict[str, Any]
    fingerprint: str


def _read_avsc(path: Path) -> tuple[dict[str, Any], Any, str, str]:
    try:
        raw = json.loads(path.read_text())
        parsed: Any = fastavro.parse_schema(raw)
    except (json.JSONDecodeError, fastavro.schema.SchemaParseException) as exc:
        raise SchemaError(f"{path.name}: invalid Avro schema: {exc}") from None
    name = str(parsed["name"])  # type: ignore[call-overload,index]
    return raw, parsed, name, fingerprint(to_parsing_canonical_form(parsed), "SHA-256")


@lru_cache(maxsize=1)
def local_schemas() -> dict[str, tuple[dict[str, Any], Any, str]]:
    """name -> (raw json, parsed schema, SHA-256 fingerprint) for every ``avsc/*.avsc``."""
    out = {}
    for path in sorted(SCHEMA_DIR.glob("*.avsc")):
        raw, parsed, name, fp = _read_avsc(path)
        out[name] = (raw, parsed, fp)
    return out


def read_manifest() -> dict[str, Any]:
    """The manifest: ``{"version": N, "schemas": [{"id", "name", "file", "fingerprint"}...]}``."""
    return json.loads(MANIFEST.read_text())


def update_manifest() -> list[str]:
    """Append ids for new or changed schemas; returns the names that got a new id."""
    manifest: dict[str, Any] = read_manifest() if MANIFEST.exists() else {"version": 0, "schemas": []}
    known = {(e["name"], e["fingerprint"]) for e in manifest["schemas"]}
    next_id = max((e["id"] for e in manifest["schemas"]), default=0) + 1
    added = []
    for path in sorted(SCHEMA_DIR.glob("*.avsc")):
        _, _, name, fp = _read_avsc(path)
        if (name, fp) not in known:
            manifest["schemas"].append({"id": next_id, "name": name, "file": path.name, "fingerprint": fp})
            added.append(name)
            next_id += 1
    if added:
        manifest["version"] += 1
        MANIFEST.write_text(json.dumps(manifest, indent=2) + "\n")
    return added


class SchemaStore:
    """Maps schema names to ids and ids to schemas, from the manifest or a Schema Registry.

    With ``cfg.url`` set, ids are looked up (or registered, when ``cfg.register``) under the subject
    ``<name>`` in the registry, and unknown ids on read are fetched from it.
    """

    def __init__(self, cfg: SchemaRegistryConfig | None = None) -> None:
        self._cfg = cfg or SchemaRegistryConfig()
        self._by_id: dict[int, SchemaInfo] = {}
        self._by_name: dict[str, SchemaInfo] = {}
        local = local_schemas()
        if self._cfg.url:
            for name, (raw, parsed, fp) in local.items():
                sid = self._registry_id(name, raw)
                self._add(SchemaInfo(sid, name, parsed, raw, fp), current=True)
            return
        for entry in read_manifest()["schemas"]:
            name = entry["name"]
            if name not in local:
                raise SchemaError(f"manifest names {name} but no avsc file defines it")
            raw, parsed, fp = local[name]
            current = entry["fingerprint"] == fp
            if current:
                self._add(SchemaInfo(entry["id"], name, parsed, raw, fp), current=True)
        missing = sorted(set(local) - set(self._by_name))
        if missing:
            raise SchemaError(
                f"schemas changed or added without a manifest id: {', '.join(missing)}; "
                "run python -m mystocks_gpu.schemas.schema_store --update"
            )

    def _add(self, info: SchemaInfo, current: bool) -> None:
        self._by_id[info.id] = info
        if current:
            self._by_name[info.name] = info

    # ---- lookups -------------------------------------------------------------------------
    def names(self) -> list[str]:
        """Full names of every current schema."""
        return sorted(self._by_name)

    def by_name(self, name: str) -> SchemaInfo:
        """The current schema for a full (``mystocks.md.Tick``) or short (``Tick``) name."""
        info = self._by_name.get(name)
        if info is None:
            matches = [v for k, v in self._by_name.items() if k.rsplit(".", 1)[-1] == name]
            if len(matches) == 1:
                return matches[0]
            raise SchemaError(f"unknown schema {name!r}; known: {', '.join(self.names())}")
        return info

    def by_id(self, schema_id: int) -> SchemaInfo:
        """The schema registered under ``schema_id``; :class:`UnknownSchemaId` if none."""
        info = self._by_id.get(schema_id)
        if info is None and self._cfg.url:
            info = self._registry_fetch(schema_id)
        if info is None:
            known = ", ".join(f"{i}={s.name}" for i, s in sorted(self._by_id.items()))
            raise UnknownSchemaId(f"unknown schema id {schema_id} (known ids: {known})")
        return info

    # ---- Schema Registry -----------------------------------------------------------------
    def _request(self, method: str, path: str, body: Any = None) -> Any:
        assert self._cfg.url
        req = urllib.request.Request(
            self._cfg.url.rstrip("/") + path,
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Content-Type": "application/vnd.schemaregistry.v1+json"},
        )
        if self._cfg.basic_auth_user:
            token = f"{self._cfg.basic_auth_user}:{self._cfg.basic_auth_password or ''}".encode()
            req.add_header("Authorization", "Basic " + base64.b64encode(token).decode())
        try:
            with urllib.request.urlopen(req, timeout=self._cfg.timeout_s) as resp:
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise SchemaError(f"schema registry {method} {path}: HTTP {exc.code} {exc.read()[:200]!r}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise SchemaError(f"schema registry at {self._cfg.url} unreachable: {exc}") from None

    def _registry_id(self, subject: str, raw: dict[str, Any]) -> int:
        body = {"schema": json.dumps(raw)}
        found = self._request("POST", f"/subjects/{subject}", body)
        if found and "id" in found:
            return int(found["id"])
        if not self._cfg.register:
            raise SchemaError(
                f"schema {subject} is not registered at {self._cfg.url}; "
                "set schema_registry.register = true to register on startup"
            )
        return int(self._request("POST", f"/subjects/{subject}/versions", body)["id"])

    def _registry_fetch(self, schema_id: int) -> SchemaInfo | None:
        found = self._request("GET", f"/schemas/ids/{schema_id}")
        if not found:
            return None
        raw = json.loads(found["schema"])
        parsed: Any = fastavro.parse_schema(raw)
        info = SchemaInfo(schema_id, parsed["name"], parsed, raw,
                          fingerprint(to_parsing_canonical_form(parsed), "SHA-256"))
        self._add(info, current=False)
        return info


@lru_cache(maxsize=4)
def default_store(cfg: SchemaRegistryConfig | None = None) -> SchemaStore:
    """A process-wide :class:`SchemaStore` per registry config."""
    return SchemaStore(cfg)


def schema_store(settings: Settings) -> SchemaStore:
    """The one store of a process, from its settings: the Schema Registry at ``schema_registry.url``
    when set (ids looked up, or registered when ``schema_registry.register``), else the manifest.
    Every codec of the process (stream processors, job runners, the control app, the CLI) is given it."""
    return default_store(settings.schema_registry)


def main(argv: list[str] | None = None) -> int:
    """``python -m mystocks_gpu.schemas.schema_store --update``: give new/changed schemas an id."""
    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--update", action="store_true", help="append ids for new or changed schemas")
    args = ap.parse_args(argv)
    if args.update:
        added = update_manifest()
        print("new ids for: " + ", ".join(added) if added else "manifest up to date")
    for e in read_manifest()["schemas"]:
        print(f"{e['id']:>4}  {e['name']}  ({e['file']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
