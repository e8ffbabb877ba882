"""The install path of `make demo` / `make test` on a bare machine, run for real through the Makefile
with the system packages hidden: PATH holds only the basic tools plus fakes of ``apt-get``,
``apt-cache`` and ``sudo`` that log how they were called (the fake ``sudo`` resets the environment
as the real one does, and the fake ``apt-get install`` puts stand-ins of the packages on PATH, so
the check after the install sees them). `make doctor` is checked the same way, and `make
test-gpu-run` with a fake CUDA device."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# the tools the Makefile and scripts/system_deps.sh use besides the ones under test
BASIC_TOOLS = ("bash", "make", "env", "id", "sed", "head", "awk", "df", "dirname", "grep", "cat", "rm")
UPDATE = "env DEBIAN_FRONTEND=noninteractive apt-get update -qq"
INSTALL = "env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends"
#: stand-ins of every tool the install provides besides python3-venv, python3-dev and java
PRESENT = ("gcc", "redis-server", "kcat", "mvn", "initdb", "prometheus", "promtool", "docker-compose", "go")


def _script(path: Path, body: str) -> None:
    path.write_text("#!/bin/bash\n" + body)
    path.chmod(0o755)


def _java(bin_dir: Path, version: str) -> None:
    _script(bin_dir / "java", f"echo 'openjdk version \"{version}\" 2024-01-16' >&2\n")


@dataclass
class Machine:
    """A fake bare Debian machine: ``bin`` is its whole PATH; apt/sudo calls land in the logs."""

    root: Path

    @property
    def bin(self) -> Path:
        return self.root / "bin"

    @property
    def apt_log(self) -> Path:
        return self.root / "apt.log"

    @property
    def sudo_log(self) -> Path:
        return self.root / "sudo.log"

    def apt_calls(self) -> list[str]:
        return self.apt_log.read_text().splitlines() if self.apt_log.exists() else []

    def sudo_calls(self) -> list[str]:
        return self.sudo_log.read_text().splitlines() if self.sudo_log.exists() else []

    def make(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        home = self.root / "home"
        home.mkdir(exist_ok=True)
        return subprocess.run(["make", "--no-print-directory", "-C", str(ROOT), *args], capture_output=True,
                              text=True, timeout=60, env={"PATH": str(self.bin), "HOME": str(home),
                                                          "MIN_FREE_GIB": "0", "PG_LIBDIR": str(self.root / "pg"),
                                                          **(env or {})})


def bare_machine(tmp_path: Path, *, sudo: bool = False, apt_knows: tuple[str, ...] = ("openjdk-17-jre-headless",),
                 python_venv: bool = False, java: str | None = "11.0.22", python_dev: bool = False) -> Machine:
    """Basic tools only; python3 without ensurepip (Debian without python3-venv) and without its
    headers (python3-dev) unless asked; an old java unless ``java`` is None. ``apt_knows``: the Java packages apt-cache finds after an update."""
    m = Machine(tmp_path)
    m.bin.mkdir()
    for tool in BASIC_TOOLS:
        real = shutil.which(tool)
        assert real, f"{tool} is needed to run this test"
        (m.bin / tool).symlink_to(real)
    venv_ok = m.root / "venv-installed"
    dev_ok = m.root / "python-headers-installed"
    if python_venv:
        venv_ok.touch()
    if python_dev:
        dev_ok.touch()
    _script(m.bin / "python3", f'if [[ "$*" == *ensurepip* ]]; then [ -e {venv_ok} ]; exit; fi\n'
                               f'if [[ "$*" == *Python.h* ]]; then [ -e {dev_ok} ]; exit; fi\necho 3.11.2\n')
    if java is not None:
        _java(m.bin, java)
    lists = m.root / "apt-lists-updated"
    known = " ".join(apt_knows)
    # apt-cache knows packages only after `apt-get update` (a fresh machine has empty lists)
    _script(m.bin / "apt-cache", f'[ -e {lists} ] && [[ " {known} " == *" $2 "* ]] || exit 100\necho "Package: $2"\n')
    touch, chmod = shutil.which("touch"), shutil.which("chmod")
    stubs = {"redis-server": "_s redis-server", "kcat": "_s kcat", "maven": "_s mvn",
             "postgresql": "_s initdb", "prometheus": "_s prometheus; _s promtool",
             "docker-compose": "_s docker-compose", "golang-go": "_s go",
             "python3-venv": f"{touch} {venv_ok}", "python3-dev": f"{touch} {dev_ok}", "gcc": "_s gcc"}
    install_cases = "".join(f"    {pkg}) {cmd};;\n" for pkg, cmd in stubs.items())
    _script(m.bin / "apt-get", f"""\
echo "DEBIAN_FRONTEND=${{DEBIAN_FRONTEND:-}} apt-get $*" >> {m.apt_log}
_s() {{ printf '#!/bin/bash\\n' > {m.bin}/$1; {chmod} +x {m.bin}/$1; }}
if [ "$1" = update ]; then {touch} {lists}; exit 0; fi
for p in "$@"; do
  case $p in
{install_cases}    openjdk-*-jre-headless) v=${{p#openjdk-}}; v=${{v%%-*}}
      printf '#!/bin/bash\\necho "openjdk version \\\\"%s.0.1\\\\"" >&2\\n' $v > {m.bin}/java; {chmod} +x {m.bin}/java;;
  esac
done
""")
    if sudo:  # like sudo's env_reset: the command sees a fresh environment, not the caller's
        _script(m.bin / "sudo", f'echo "sudo $*" >> {m.sudo_log}\nexec {shutil.which("env")} -i PATH="$PATH" "$@"\n')
    return m


def test_root_installs_every_missing_package_without_sudo(tmp_path: Path) -> None:
    m = bare_machine(tmp_path, sudo=True)  # sudo present, but root must not use it
    r = m.make("system-deps", "AS_UID=0")
    assert r.returncode == 0, r.stdout + r.stderr
    pkgs = "python3-venv python3-dev gcc redis-server kcat openjdk-17-jre-headless maven postgresql prometheus docker-compose golang-go"
    assert m.apt_calls() == ["DEBIAN_FRONTEND=noninteractive apt-get update -qq",
                             f"DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends {pkgs}"]
    assert m.sudo_calls() == []
    assert f"  {INSTALL} {pkgs}" in r.stdout and "system packages: installed" in r.stdout
    # a second run finds everything and runs no apt at all
    r = m.make("system-deps", "AS_UID=0")
    assert r.returncode == 0 and "system packages: all present" in r.stdout
    assert len(m.apt_calls()) == 2


def test_user_installs_through_sudo_and_debian_frontend_survives_it(tmp_path: Path) -> None:
    m = bare_machine(tmp_path, sudo=True, python_venv=True, java=None)
    r = m.make("system-deps", "AS_UID=1000")
    assert r.returncode == 0, r.stdout + r.stderr
    pkgs = "python3-dev gcc redis-server kcat openjdk-17-jre-headless maven postgresql prometheus docker-compose golang-go"
    assert m.sudo_calls() == [f"sudo {UPDATE}", f"sudo {INSTALL} {pkgs}"]
    # apt-get ran in sudo's fresh environment and still saw DEBIAN_FRONTEND
    assert m.apt_calls() == ["DEBIAN_FRONTEND=noninteractive apt-get update -qq",
                             f"DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends {pkgs}"]


def test_user_without_sudo_gets_a_clear_error_and_no_apt(tmp_path: Path) -> None:
    m = bare_machine(tmp_path, sudo=False)
    r = m.make("system-deps", "AS_UID=1000")
    assert r.returncode != 0
    assert "needs root or sudo, and sudo is not installed" in r.stderr
    assert m.apt_calls() == []


def test_java_package_is_the_one_the_release_offers(tmp_path: Path) -> None:
    # Debian 13 has no openjdk-17: the >= 17 runtime it offers is picked after `apt-get update`
    m = bare_machine(tmp_path, python_venv=True, python_dev=True,
                     apt_knows=("openjdk-21-jre-headless", "openjdk-25-jre-headless"))
    for tool in PRESENT:
        _script(m.bin / tool, "")
    r = m.make("system-deps", "AS_UID=0")
    assert r.returncode == 0, r.stdout + r.stderr
    assert m.apt_calls()[1] == "DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends openjdk-21-jre-headless"


@pytest.mark.parametrize("version, ok", [("17.0.15", True), ("21", True), ("11.0.22", False), ("1.8.0_292", False)])
def test_java_version_is_checked(tmp_path: Path, version: str, ok: bool) -> None:
    m = bare_machine(tmp_path, python_venv=True, python_dev=True, java=version)
    for tool in PRESENT:
        _script(m.bin / tool, "")
    r = m.make("doctor", "AS_UID=0")
    if ok:
        assert r.returncode == 0, r.stdout + r.stderr
        assert f"ok       java           {version.split('.')[0]} (" in r.stdout
    else:
        major = "8" if version.startswith("1.") else version.split(".")[0]
        assert r.returncode != 0
        assert f"TOO OLD  java           {major} at {m.bin}/java; Kafka 4 needs 17+" in r.stdout
        assert f"  {INSTALL} openjdk-17-jre-headless" in r.stdout


def test_doctor_reports_each_missing_tool_with_its_package(tmp_path: Path) -> None:
    m = bare_machine(tmp_path, sudo=True, java=None)
    r = m.make("doctor", "AS_UID=1000")
    assert r.returncode != 0  # something is missing
    out = r.stdout
    for line in ("MISSING  python3 venv   `python3 -m venv` cannot install pip -> apt package python3-venv",
                 "MISSING  python3 dev    Python.h builds the columnar I/O extension -> apt package python3-dev",
                 "MISSING  gcc            -> apt package gcc",
                 "MISSING  redis-server   -> apt package redis-server",
                 "MISSING  kcat           -> apt package kcat",
                 "MISSING  java           Kafka 4 needs Java 17+ -> apt package openjdk-17-jre-headless",
                 "MISSING  mvn            resolves Kafka's jars from Maven Central -> apt package maven",
                 "MISSING  postgresql     the Connect sinks' database -> apt package postgresql",
                 "MISSING  prometheus     the monitoring server and promtool (alert rule tests) -> apt package prometheus",
                 "MISSING  docker-compose `docker-compose config` checks docker-compose.yml -> apt package docker-compose",
                 "MISSING  go             builds kubeconform and kustomize (the manifest checks) -> apt package golang-go",
                 "apt-get runs through sudo (uid 1000)",
                 f"  sudo {UPDATE}",
                 f"  sudo {INSTALL} python3-venv python3-dev gcc redis-server kcat openjdk-17-jre-headless maven postgresql prometheus docker-compose golang-go"):
        assert line in out, out
    assert "ok       disk" in out
    assert m.apt_calls() == [] and m.sudo_calls() == []  # doctor changes nothing


def test_doctor_passes_when_everything_is_present(tmp_path: Path) -> None:
    m = bare_machine(tmp_path, python_venv=True, java="17.0.15", python_dev=True)
    for tool in PRESENT:
        _script(m.bin / tool, "")
    r = m.make("doctor", "AS_UID=0")
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.rstrip().endswith("all present")
    assert "apt-get runs as root (no sudo)" in r.stdout


def test_doctor_fails_on_low_disk(tmp_path: Path) -> None:
    m = bare_machine(tmp_path, python_venv=True, java="17.0.15", python_dev=True)
    for tool in PRESENT:
        _script(m.bin / tool, "")
    r = m.make("doctor", "AS_UID=0", env={"MIN_FREE_GIB": "1000000"})
    assert r.returncode != 0
    assert "LOW      disk" in r.stdout and "need 1000000 GiB" in r.stdout


# ---- make test-gpu-run ----------------------------------------------------------------------


def _fake_python(m: Machine, cupy_ok: bool) -> Path:
    py = m.root / "python"
    log = m.root / "python.log"
    _script(py, f'echo "$*" >> {log}\n'
                f'if [[ "$*" == *"import cupy"* ]]; then {"echo CuPy 13.6.0: 1 CUDA device" if cupy_ok else "echo No module named cupy >&2; exit 1"}; fi\n')
    return py


def test_gpu_tests_fail_when_a_device_exists_but_cupy_does_not_import(tmp_path: Path) -> None:
    m = bare_machine(tmp_path)
    _script(m.bin / "nvidia-smi", "echo 'GPU 0: NVIDIA H200'\n")
    r = m.make("test-gpu-run", f"PY={_fake_python(m, cupy_ok=False)}", "NVIDIA_DEV=/nonexistent")
    assert r.returncode != 0
    assert "a CUDA device is present but CuPy does not import or see it" in r.stderr
    assert "-m pytest" not in (m.root / "python.log").read_text()


def test_gpu_tests_fail_without_a_device(tmp_path: Path) -> None:
    m = bare_machine(tmp_path)
    r = m.make("test-gpu-run", f"PY={_fake_python(m, cupy_ok=True)}", "NVIDIA_DEV=/nonexistent")
    assert r.returncode != 0 and "no CUDA device" in r.stderr


def test_gpu_tests_run_the_gpu_marker_when_cupy_sees_the_device(tmp_path: Path) -> None:
    m = bare_machine(tmp_path)
    dev = tmp_path / "nvidia0"
    dev.touch()
    r = m.make("test-gpu-run", f"PY={_fake_python(m, cupy_ok=True)}", f"NVIDIA_DEV={dev}", "PYTEST_ARGS=tests/unit")
    assert r.returncode == 0, r.stdout + r.stderr
    calls = (m.root / "python.log").read_text().splitlines()
    assert calls[-1] == "-m pytest -p no:cacheprovider -ra -m gpu tests/unit"


def test_readme_and_ci_name_the_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "make test-gpu" in readme and "make doctor" in readme
    ci = (ROOT / ".ci" / "run").read_text()
    steps = [ln.strip() for ln in ci.splitlines() if ln.strip().startswith("make ")]
    assert [s.split()[1] for s in steps] == ["doctor", "test-install-path", "doctor", "lint", "audit",
                                                      "test"], steps
    assert os.access(ROOT / ".ci" / "run", os.X_OK)
