"""The alert rules (deploy/prometheus/rules.yml) pass `promtool check rules`, and their unit tests
(`promtool test rules deploy/prometheus/rules.test.yml`) fire and resolve every alert: each alert
has a case where it is expected to fire and a later one where it must be gone. promtool comes with
Debian's `prometheus` package (`make install`); without it these tests fail with that reason."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "rules.yml"
TESTS = ROOT / "deploy" / "prometheus" / "rules.test.yml"


def _promtool() -> str:
    tool = shutil.which("promtool")
    assert tool, "promtool is missing: apt-get install prometheus (`make install` installs it)"
    return tool


def test_rules_are_valid() -> None:
    r = subprocess.run([_promtool(), "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS: 11 rules found" in r.stdout


def test_rule_unit_tests_pass() -> None:
    r = subprocess.run([_promtool(), "test", "rules", str(TESTS)], capture_output=True, text=True, timeout=120,
                       cwd=TESTS.parent)
    assert r.returncode == 0 and "SUCCESS" in r.stdout, r.stdout + r.stderr


def test_every_alert_fires_and_resolves_in_the_unit_tests() -> None:
    import yaml

    alerts = [r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
    cases: dict[str, list[tuple[int, bool]]] = {}
    for t in yaml.safe_load(TESTS.read_text())["tests"]:
        for c in t["alert_rule_test"]:
            minutes = int(str(c["eval_time"]).rstrip("m"))
            cases.setdefault(c["alertname"], []).append((minutes, bool(c["exp_alerts"])))
    for name in alerts:
        seq = sorted(cases.get(name, []))
        fired = [t for t, firing in seq if firing]
        assert fired, f"{name}: no case where it fires"
        assert any(not firing and t > fired[0] for t, firing in seq), f"{name}: no case where it resolves"
        assert any(not firing and t < fired[0] for t, firing in seq), f"{name}: no case before it fires"


@pytest.mark.parametrize("broken, why", [
    ("expr: max by (instance, device) (mystocks_gpu_utilization_ratio) > 0.95",
     "expr: max by (instance, device) (mystocks_gpu_utilization_ratio) > 0.99"),
])
def test_a_changed_threshold_fails_the_unit_tests(tmp_path: Path, broken: str, why: str) -> None:
    """The unit tests pin the thresholds: with GPU overload at 99% the 0.99-busy series no longer fires."""
    rules = RULES.read_text()
    assert broken in rules
    (tmp_path / "rules.yml").write_text(rules.replace(broken, why))
    (tmp_path / "rules.test.yml").write_text(TESTS.read_text())
    r = subprocess.run([_promtool(), "test", "rules", "rules.test.yml"], capture_output=True, text=True, timeout=120,
                       cwd=tmp_path)
    assert r.returncode != 0 and "MystocksGpuOverload" in r.stdout + r.stderr
