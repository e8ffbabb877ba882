"""Supply-chain audit: known vulnerabilities in the LOCKED dependencies (``requirements.lock``).

Two sources, the first that can answer:

1. ``pip-audit`` over the exact pinned versions of the lock file (``--no-deps --disable-pip``:
   no resolution, nothing installed) against PyPI's vulnerability service (``-s pypi``: PyPI's
   per-release JSON, which carries the OSV advisories; the OSV API itself is not reachable from
   this project's machines).
2. When that service does not answer (every package "not found on PyPI": the per-release JSON API
   is blocked here, only the package index is reachable), the vendored snapshot of the PyPA
   advisory database, ``security/pypa-advisories.json.gz`` (OSV ranges matched with PEP 440
   versions; its date is printed: refresh it with ``scripts/advisory_snapshot.py``).

Every finding fails the audit (exit 1) unless ``security/audit-allowlist.toml`` accepts it: each
entry names the advisory (``id``, or any alias), the package and ``reason`` (why it cannot be
exploited here, or why it cannot be fixed yet); entries without a reason are an error (exit 2),
entries that match nothing are reported for removal. ``--json PATH`` writes the findings.
Exit codes: 0 clean (or only allowed findings), 1 findings, 2 the audit could not run.
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from packaging.version import InvalidVersion, Version

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
SNAPSHOT = ROOT / "security" / "pypa-advisories.json.gz"
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._\-]*)(\[[^\]]*\])?==([^\s;#]+)")


def norm(name: str) -> str:
    """PEP 503 name normalisation (lower case, runs of -_. as one -)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def load_allowlist(path: Path) -> list[dict[str, str]]:
    """The allow-list entries; SystemExit(2) naming an entry without ``id``, ``package`` or ``reason``."""
    if not path.exists():
        return []
    entries = tomllib.loads(path.read_text()).get("ignore", [])
    for i, e in enumerate(entries):
        missing = [k for k in ("id", "package", "reason") if not str(e.get(k, "")).strip()]
        if missing:
            print(f"audit: {path} entry #{i + 1} lacks {', '.join(missing)} (every allowed vulnerability must "
                  "say why it is acceptable)", file=sys.stderr)
            raise SystemExit(2)
    return entries


def locked(path: Path) -> dict[str, str]:
    """``{normalised name: version}`` of every ``name==version`` pin (markers ignored: all platforms)."""
    out: dict[str, str] = {}
    for line in path.read_text().splitlines():
        m = _PIN.match(line.strip())
        if m:
            out.setdefault(norm(m.group(1)), m.group(3))  # a package pinned per Python version: the first
            out[norm(m.group(1)) + "@" + m.group(3)] = m.group(3)
    return out


def _affected(version: str, adv: dict[str, Any]) -> bool:
    """OSV semantics: ``version`` is listed, or inside an ECOSYSTEM range (introduced <= v < fixed,
    or <= last_affected)."""
    if version in adv.get("versions", []):
        return True
    try:
        v = Version(version)
    except InvalidVersion:
        return False
    for events in adv.get("ranges", []):
        lo: Version | None = None
        for e in events:
            try:
                if "introduced" in e:
                    lo = Version("0") if e["introduced"] == "0" else Version(e["introduced"])
                elif "fixed" in e and lo is not None:
                    if lo <= v < Version(e["fixed"]):
                        return True
                    lo = None
                elif "last_affected" in e and lo is not None:
                    if lo <= v <= Version(e["last_affected"]):
                        return True
                    lo = None
            except InvalidVersion:
                lo = None
        if lo is not None and v >= lo:  # introduced, never fixed
            return True
    return False


def offline_findings(pins: dict[str, str], snapshot: Path) -> tuple[list[tuple[str, str, dict[str, Any]]], str]:
    """Findings of the vendored advisory snapshot, and a line naming the snapshot."""
    with gzip.open(snapshot, "rt") as fh:
        db = json.load(fh)
    out = []
    for key, version in pins.items():
        name = key.split("@")[0]
        if "@" not in key and f"{name}@{version}" in pins:
            continue  # counted under its name@version entry
        for adv in db["packages"].get(name, []):
            if _affected(version, adv):
                out.append((name, version, {"id": adv["id"], "aliases": adv.get("aliases", []), "fix_versions": [
                    e["fixed"] for r in adv.get("ranges", []) for e in r if "fixed" in e]}))
    return out, f"PyPA advisory database snapshot {db.get('date')} ({db.get('commit', '')[:12]}, {db['advisories']} advisories)"


def online_findings(lock: Path, service: str) -> tuple[list[tuple[str, str, dict[str, Any]]], int, int] | None:
    """pip-audit's findings, audited and skipped package counts; None when the service did not answer."""
    cmd = [sys.executable, "-m", "pip_audit", "-r", str(lock), "--no-deps", "--disable-pip", "-s", service, "-f",
           "json", "--progress-spinner", "off"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    try:
        report = json.loads(proc.stdout)
    except ValueError:
        return None
    deps = report.get("dependencies", []) if isinstance(report, dict) else []
    skipped = [d for d in deps if d.get("skip_reason")]
    if not deps or len(skipped) == len(deps):
        return None
    return [(d["name"], d.get("version", "?"), v) for d in deps for v in d.get("vulns", [])], len(deps), len(skipped)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lock", type=Path, default=ROOT / "requirements.lock")
    ap.add_argument("--allowlist", type=Path, default=ROOT / "security" / "audit-allowlist.toml")
    ap.add_argument("--service", default="pypi", choices=["pypi", "osv"], help="pip-audit's service (default pypi)")
    ap.add_argument("--snapshot", type=Path, default=SNAPSHOT, help="the offline advisory snapshot")
    ap.add_argument("--offline", action="store_true", help="use only the snapshot (no pip-audit)")
    ap.add_argument("--json", type=Path, help="write the findings here")
    args = ap.parse_args(argv)
    allow = load_allowlist(args.allowlist)
    pins = locked(args.lock)
    n_pkgs = len([k for k in pins if "@" not in k])
    online = None if args.offline else online_findings(args.lock, args.service)
    if online is not None:
        found, audited, skipped = online
        source = f"pip-audit -s {args.service}: {audited - skipped} of {audited} packages audited"
    else:
        if not args.snapshot.exists():
            print(f"audit: the vulnerability service did not answer and {args.snapshot} is missing: nothing audited",
                  file=sys.stderr)
            return 2
        found, source = offline_findings(pins, args.snapshot)
        if not args.offline:
            source = f"pip-audit -s {args.service} unreachable here; {source}"
    used: set[int] = set()
    bad = []
    for pkg, ver, v in found:
        ids = {v.get("id", ""), *v.get("aliases", [])}
        hit = next((i for i, e in enumerate(allow) if e["id"] in ids and norm(e["package"]) == norm(pkg)), None)
        if hit is None:
            bad.append((pkg, ver, v))
        else:
            used.add(hit)
            print(f"allowed  {pkg} {ver} {v.get('id')}: {allow[hit]['reason']}")
    for i, e in enumerate(allow):
        if i not in used:
            print(f"stale    allow-list entry {e['id']} ({e['package']}) matches nothing: remove it")
    for pkg, ver, v in bad:
        fix = ", ".join(v.get("fix_versions", [])) or "no fixed version yet"
        print(f"VULN     {pkg} {ver} {v.get('id')} ({', '.join(v.get('aliases', []))}) fixed in: {fix}")
    if args.json:
        args.json.write_text(json.dumps({"source": source, "findings": [
            {"package": p, "version": ver, **v} for p, ver, v in found]}, indent=1))
    print(f"audit: {n_pkgs} locked packages, {len(found)} known vulnerabilities, {len(bad)} not allowed ({source})")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
