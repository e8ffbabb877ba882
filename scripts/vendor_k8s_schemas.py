"""Regenerate the JSON schemas kubeconform validates ``deploy/k8s`` against (``deploy/k8s/schemas``).

Nothing is fetched at test time: kubeconform's default schema location (GitHub) is unreachable from
CI, so the schemas of the kinds the manifests use are vendored, strict (no unknown fields) and
standalone (every ``$ref`` inside the file):

- Kubernetes kinds from the PyPI package ``kubernetes-validate`` (it ships the OpenAPI-derived
  JSON schemas of each Kubernetes release, ``<version>-local-strict``; their refs point into one
  ``_definitions.json``, so each kind's schema gets the definitions it reaches inlined as ``$defs``);
- KEDA's ``ScaledObject`` from the CRD in KEDA's Go module (``config/crd/bases/keda.sh_scaledobjects.yaml``),
  its ``openAPIV3Schema`` made strict like kubeconform's ``openapi2jsonschema.py`` does.

Run (network to PyPI and the Go module proxy, once)::

    pip download --no-deps -d /tmp/kv kubernetes-validate==1.37.0
    go mod download -json github.com/kedacore/keda/v2@v2.17.2     # prints the module's Dir
    python scripts/vendor_k8s_schemas.py /tmp/kv/kubernetes_validate-1.37.0-py3-none-any.whl \\
        <Dir>/config/crd/bases/keda.sh_scaledobjects.yaml
"""

from __future__ import annotations

import argparse
import json
import re
import zipfile
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "deploy" / "k8s" / "schemas"
K8S_VERSION = "v1.34.0"
#: file names kubeconform looks up: {{ .ResourceKind }}{{ .KindSuffix }}.json
KINDS = ("deployment-apps-v1", "service-v1", "configmap-v1", "secret-v1", "poddisruptionbudget-policy-v1",
         "namespace-v1")
_REF = re.compile(r"^(?:/api/_definitions\.json)?#/\$defs/(.+)$")


def _refs(node: Any, found: set[str]) -> None:
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "$ref" and isinstance(v, str):
                m = _REF.match(v)
                if m:
                    found.add(m.group(1))
            else:
                _refs(v, found)
    elif isinstance(node, list):
        for v in node:
            _refs(v, found)


def _rewrite(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: (("#/$defs/" + _REF.match(v).group(1)) if k == "$ref" and isinstance(v, str) and _REF.match(v)  # type: ignore[union-attr]
                    else _rewrite(v)) for k, v in node.items()}
    if isinstance(node, list):
        return [_rewrite(v) for v in node]
    return node


def standalone(kind_schema: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """``kind_schema`` with the definitions it reaches (transitively) inlined as ``$defs``."""
    need: set[str] = set()
    _refs(kind_schema, need)
    done: set[str] = set()
    while need - done:
        name = sorted(need - done)[0]
        done.add(name)
        _refs(defs[name], need)
    out = _rewrite(kind_schema)
    out["$schema"] = "http://json-schema.org/draft-07/schema#" if "$schema" not in out else out["$schema"]
    out["$defs"] = {n: _rewrite(defs[n]) for n in sorted(done)}
    return dict(out)


def strict_crd(node: Any) -> Any:
    """An openAPIV3Schema as strict JSON schema: objects with ``properties`` and no
    ``additionalProperties`` / ``x-kubernetes-preserve-unknown-fields`` reject unknown keys;
    ``x-kubernetes-int-or-string`` becomes ``string | integer``."""
    if isinstance(node, list):
        return [strict_crd(v) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: strict_crd(v) for k, v in node.items()}
    if out.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["oneOf"] = [{"type": "string"}, {"type": "integer"}]
    if "properties" in out and "additionalProperties" not in out and not out.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("wheel", type=Path, help="kubernetes_validate-*.whl")
    ap.add_argument("keda_crd", type=Path, help="keda.sh_scaledobjects.yaml")
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    base = f"kubernetes_validate/kubernetes-json-schema/{K8S_VERSION}-local-strict/"
    with zipfile.ZipFile(args.wheel) as wheel:
        defs = json.loads(wheel.read(base + "_definitions.json"))["$defs"]
        for kind in KINDS:
            schema = standalone(json.loads(wheel.read(f"{base}{kind}.json")), defs)
            (OUT / f"{kind}.json").write_text(json.dumps(schema, separators=(",", ":"), sort_keys=True) + "\n")
    crd = yaml.safe_load(args.keda_crd.read_text())
    for version in crd["spec"]["versions"]:
        schema = strict_crd(version["schema"]["openAPIV3Schema"])
        schema["properties"]["apiVersion"] = {"type": "string", "enum": [f"{crd['spec']['group']}/{version['name']}"]}
        schema["properties"]["kind"] = {"type": "string", "enum": [crd["spec"]["names"]["kind"]]}
        schema["properties"]["metadata"] = {"type": "object"}
        name = f"{crd['spec']['names']['singular']}-{crd['spec']['group'].split('.')[0]}-{version['name']}.json"
        (OUT / name).write_text(json.dumps(schema, separators=(",", ":"), sort_keys=True) + "\n")
    (OUT / "SOURCES.txt").write_text(
        f"Kubernetes {K8S_VERSION} kinds {', '.join(KINDS)}: PyPI kubernetes-validate ({args.wheel.name}), "
        f"{K8S_VERSION}-local-strict, definitions inlined.\n"
        f"KEDA ScaledObject: {args.keda_crd} (Go module github.com/kedacore/keda/v2), made strict.\n"
        "Regenerate: scripts/vendor_k8s_schemas.py (see its docstring).\n")


if __name__ == "__main__":
    main()
