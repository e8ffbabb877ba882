"""`make audit` (scripts/audit.py) in its offline mode: the vendored PyPA advisory snapshot finds
known advisories of pinned versions (CVE-2018-18074 in requests 2.19.0, a public fact), an
allow-list entry with a reason accepts one, an entry without a reason is an error, a stale one is
reported; the real lock file is clean or fully allowed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def audit(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "audit.py"), "--offline", *args],
                          capture_output=True, text=True, timeout=120)


def test_offline_audit_finds_allows_and_rejects(tmp_path: Path) -> None:
    lock = tmp_path / "req.lock"
    lock.write_text("requests==2.19.0 ; python_version >= '3.8'\n    # via x\nnumpy==2.4.6\n")
    none = tmp_path / "none.toml"
    none.write_text("")
    r = audit("--lock", str(lock), "--allowlist", str(none))
    assert r.returncode == 1
    assert "VULN     requests 2.19.0 PYSEC-2018-28 (CVE-2018-18074" in r.stdout and "fixed in: 2.20.0" in r.stdout
    allow = tmp_path / "allow.toml"
    allow.write_text('[[ignore]]\nid = "CVE-2018-18074"\npackage = "Requests"\nreason = "no redirects followed"\n'
                     '[[ignore]]\nid = "PYSEC-2023-74"\npackage = "requests"\nreason = "no proxies"\n'
                     '[[ignore]]\nid = "GHSA-0000-0000-0000"\npackage = "numpy"\nreason = "old"\n')
    r = audit("--lock", str(lock), "--allowlist", str(allow))
    assert r.returncode == 0, r.stdout
    assert "allowed  requests 2.19.0 PYSEC-2018-28: no redirects followed" in r.stdout
    assert "stale    allow-list entry GHSA-0000-0000-0000 (numpy) matches nothing" in r.stdout
    allow.write_text('[[ignore]]\nid = "CVE-2018-18074"\npackage = "requests"\n')
    r = audit("--lock", str(lock), "--allowlist", str(allow))
    assert r.returncode == 2 and "lacks reason" in r.stderr


def test_the_lock_file_passes_the_audit() -> None:
    r = audit()
    assert r.returncode == 0, r.stdout + r.stderr
    assert "not allowed" in r.stdout and "locked packages" in r.stdout
