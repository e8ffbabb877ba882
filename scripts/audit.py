"""Supply-chain audit: known vulnerabilities in the LOCKED dependencies (``requirements.lock``).

Runs ``pip-audit`` over the exact pinned versions of the lock file (``--no-deps --disable-pip``: no
resolution, nothing installed) against PyPI's vulnerability service (``-s pypi``: the advisories
PyPI serves from the OSV database; the OSV API itself is not reachable from this project's
machines), then fails (exit 1) on every finding that ``audit-allowlist.toml`` does not accept.
Each allow-list entry names the advisory (``id``, or any alias), the package, and ``reason``: why
it cannot be exploited here or cannot be fixed yet; entries without a reason are an error, and
entries that no longer match anything are reported so they can be removed. ``--json PATH`` keeps
pip-audit's report. Exit codes: 0 clean (or only allowed findings), 1 findings, 2 audit failed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]


def load_allowlist(path: Path) -> list[dict[str, str]]:
    """The allow-list entries; SystemExit(2) naming an entry without ``id``, ``package`` or ``reason``."""
    if not path.exists():
        return []
    entries = tomllib.loads(path.read_text()).get("ignore", [])
    for i, e in enumerate(entries):
        missing = [k for k in ("id", "package", "reason") if not str(e.get(k, "")).strip()]
        if missing:
            raise SystemExit(f"audit: {path} entry #{i + 1} lacks {', '.join(missing)} (every allowed "
                             "vulnerability must say why it is acceptable)")
    return entries


def findings(report: dict) -> list[tuple[str, str, dict]]:
    """``(package, version, vulnerability)`` for every vulnerability in a pip-audit JSON report."""
    deps = report.get("dependencies", report) if isinstance(report, dict) else report
    return [(d["name"], d.get("version", "?"), v) for d in deps for v in d.get("vulns", [])]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lock", default=str(ROOT / "requirements.lock"))
    ap.add_argument("--allowlist", default=str(ROOT / "audit-allowlist.toml"))
    ap.add_argument("--service", default="pypi", choices=["pypi", "osv"], help="vulnerability service (default pypi)")
    ap.add_argument("--json", help="write pip-audit's JSON report here")
    args = ap.parse_args(argv)
    allow = load_allowlist(Path(args.allowlist))
    cmd = [sys.executable, "-m", "pip_audit", "-r", args.lock, "--no-deps", "--disable-pip", "-s", args.service,
           "-f", "json", "--progress-spinner", "off"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    try:
        report = json.loads(proc.stdout)
    except ValueError:
        print(f"audit: pip-audit failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}", file=sys.stderr)
        return 2
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    used: set[int] = set()
    bad = []
    found = findings(report)
    for pkg, ver, v in found:
        ids = {v.get("id", ""), *v.get("aliases", [])}
        hit = next((i for i, e in enumerate(allow) if e["id"] in ids and e["package"].lower() == pkg.lower()), None)
        if hit is None:
            bad.append((pkg, ver, v))
        else:
            used.add(hit)
            print(f"allowed  {pkg} {ver} {v.get('id')}: {allow[hit]['reason']}")
    for i, e in enumerate(allow):
        if i not in used:
            print(f"stale    allow-list entry {e['id']} ({e['package']}) matches nothing: remove it")
    n_deps = len(report.get("dependencies", [])) if isinstance(report, dict) else 0
    for pkg, ver, v in bad:
        fix = ", ".join(v.get("fix_versions", [])) or "no fixed version yet"
        print(f"VULN     {pkg} {ver} {v.get('id')} ({', '.join(v.get('aliases', []))}) fixed in: {fix}")
    print(f"audit: {n_deps} locked packages, {len(found)} known vulnerabilities, {len(bad)} not allowed "
          f"(service: {args.service})")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
