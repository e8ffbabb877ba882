#!/usr/bin/env bash
# The system packages `make demo` / `make test` need on Debian/Ubuntu, checked and installed.
#
#   scripts/system_deps.sh doctor    report each prerequisite (tool, the apt package that provides
#                                    it, Java version, venv support, free disk) and the exact apt
#                                    commands `install` would run; exit 1 when something is missing
#   scripts/system_deps.sh install   apt-get update + install what is missing (nothing when all is
#                                    present), then check again; exit 1 with the reason on failure
#
# Environment (the Makefile passes them; tests override them):
#   AS_UID        uid that runs apt (default: `id -u`): 0 runs apt-get directly, any other uid
#                 through sudo (an error naming the packages when sudo is not installed)
#   MIN_FREE_GIB  free disk needed for .venv, pip/Maven caches and Kafka's data (default 4)
#   CACHE_DIR     where the Kafka jars are cached (default ~/.cache/mystocks-gpu)
#   KAFKA_VERSION the pinned Kafka release (default 4.1.1)
#   PG_LIBDIR     where Debian's postgresql puts its server programs (default /usr/lib/postgresql)
set -uo pipefail

MIN_JAVA=17
MIN_FREE_GIB=${MIN_FREE_GIB:-4}
AS_UID=${AS_UID:-$(id -u)}
CACHE_DIR=${CACHE_DIR:-$HOME/.cache/mystocks-gpu}
KAFKA_VERSION=${KAFKA_VERSION:-4.1.1}
PG_LIBDIR=${PG_LIBDIR:-/usr/lib/postgresql}
APT_ENV=(env DEBIAN_FRONTEND=noninteractive)   # through sudo too: sudo resets the environment

# ---- probes -------------------------------------------------------------------------------

# major version of a java binary: "17.0.15" -> 17, "1.8.0_292" -> 8; 0 when unreadable
java_major() {
  local v
  v=$("$1" -version 2>&1 | sed -n 's/.*version "\([^"]*\)".*/\1/p' | head -n 1)
  v=${v#1.}
  v=${v%%[!0-9]*}
  echo "${v:-0}"
}

# the apt package of a Java >= 17 runtime this release offers (Debian 12: 17; Debian 13: 21);
# openjdk-17-jre-headless when the package lists are empty (before `apt-get update`)
java_package() {
  local v
  if command -v apt-cache >/dev/null; then
    for v in 17 21 25; do
      if apt-cache show "openjdk-$v-jre-headless" >/dev/null 2>&1; then
        echo "openjdk-$v-jre-headless"; return
      fi
    done
  fi
  echo "openjdk-$MIN_JAVA-jre-headless"
}

free_gib() {  # free GiB on the filesystem holding $1 (or its nearest existing parent)
  local d=$1
  while [ ! -e "$d" ]; do d=$(dirname "$d"); done
  df -Pk "$d" 2>/dev/null | awk 'NR==2 {printf "%d", $4 / 1048576}'
}

# Fills MISSING (apt packages, "@java" stands for the Java package) and REPORT (one line each).
probe() {
  MISSING=()
  REPORT=()
  local py java major d gib
  if py=$(command -v python3); then
    REPORT+=("ok       python3        $("$py" -c 'import sys; print(sys.version.split()[0])' 2>/dev/null) ($py)")
    if "$py" -c 'import ensurepip, venv' >/dev/null 2>&1; then
      REPORT+=("ok       python3 venv   ensurepip available")
    else
      REPORT+=("MISSING  python3 venv   \`python3 -m venv\` cannot install pip -> apt package python3-venv")
      MISSING+=(python3-venv)
    fi
  else
    REPORT+=("MISSING  python3        -> apt packages python3 python3-venv")
    MISSING+=(python3 python3-venv)
  fi
  # the worker's columnar record I/O is a C extension built by pip (mystocks_gpu/streams/_rdbatch.c): it
  # needs Python's headers and gcc (probed with the tools below)
  if [ -n "$py" ] && "$py" -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' >/dev/null 2>&1; then
    REPORT+=("ok       python3 dev    Python.h found")
  else
    REPORT+=("MISSING  python3 dev    Python.h builds the columnar I/O extension -> apt package python3-dev")
    MISSING+=(python3-dev)
  fi
  local tool pkg
  for tool in gcc:gcc redis-server:redis-server kcat:kcat; do  # gcc: compiles the extension
    pkg=${tool#*:}; tool=${tool%%:*}
    if command -v "$tool" >/dev/null; then
      REPORT+=("ok       $(printf '%-14s' "$tool") $(command -v "$tool")")
    else
      REPORT+=("MISSING  $(printf '%-14s' "$tool") -> apt package $pkg")
      MISSING+=("$pkg")
    fi
  done
  if java=$(command -v java); then
    major=$(java_major "$java")
    if [ "$major" -ge "$MIN_JAVA" ]; then
      REPORT+=("ok       java           $major ($java)")
    else
      [ "$major" = 0 ] && major="an unknown version"
      REPORT+=("TOO OLD  java           $major at $java; Kafka 4 needs $MIN_JAVA+ -> apt package $(java_package)")
      MISSING+=(@java)
    fi
  else
    REPORT+=("MISSING  java           Kafka 4 needs Java $MIN_JAVA+ -> apt package $(java_package)")
    MISSING+=(@java)
  fi
  if command -v mvn >/dev/null; then
    REPORT+=("ok       mvn            $(command -v mvn)")
  else
    REPORT+=("MISSING  mvn            resolves Kafka's jars from Maven Central -> apt package maven")
    MISSING+=(maven)
  fi
  # the optional stack servers (`stack up --with postgres,connect,prometheus`) and their tests
  local initdb="" f
  for f in "$PG_LIBDIR"/*/bin/initdb; do [ -x "$f" ] && initdb=$f; done
  [ -n "$initdb" ] || initdb=$(command -v initdb || true)
  if [ -n "$initdb" ]; then
    REPORT+=("ok       postgresql     $initdb")
  else
    REPORT+=("MISSING  postgresql     the Connect sinks' database -> apt package postgresql")
    MISSING+=(postgresql)
  fi
  if command -v prometheus >/dev/null && command -v promtool >/dev/null; then
    REPORT+=("ok       prometheus     $(command -v prometheus) (+ promtool)")
  else
    REPORT+=("MISSING  prometheus     the monitoring server and promtool (alert rule tests) -> apt package prometheus")
    MISSING+=(prometheus)
  fi
  if command -v docker-compose >/dev/null; then
    REPORT+=("ok       docker-compose $(command -v docker-compose)")
  else
    REPORT+=("MISSING  docker-compose \`docker-compose config\` checks docker-compose.yml -> apt package docker-compose")
    MISSING+=(docker-compose)
  fi
  if command -v go >/dev/null; then
    REPORT+=("ok       go             $(go env GOVERSION 2>/dev/null) (go-installs kubeconform and kustomize for the manifest checks)")
  else
    REPORT+=("MISSING  go             builds kubeconform and kustomize (the manifest checks) -> apt package golang-go")
    MISSING+=(golang-go)
  fi
  for d in "$PWD" "$HOME"; do
    gib=$(free_gib "$d")
    if [ "${gib:-0}" -ge "$MIN_FREE_GIB" ]; then
      REPORT+=("ok       disk           $gib GiB free at $d")
    else
      REPORT+=("LOW      disk           ${gib:-?} GiB free at $d; .venv, pip/Maven caches and Kafka data need $MIN_FREE_GIB GiB")
      LOW_DISK=1
    fi
  done
  if [ -f "$CACHE_DIR/kafka-$KAFKA_VERSION/libs/MANIFEST.sha1" ]; then
    REPORT+=("ok       kafka jars     cached in $CACHE_DIR/kafka-$KAFKA_VERSION (checked against its SHA-1 manifest on every start)")
  else
    REPORT+=("info     kafka jars     not cached yet: the first \`stack up\` resolves them with Maven (needs the network)")
  fi
}

# apt-get through sudo unless root; prints and runs (or, with $1 = print, only prints) the command
apt_cmd() {
  local mode=$1; shift
  local cmd=("${APT_ENV[@]}" apt-get "$@")
  [ "$AS_UID" = 0 ] || cmd=(sudo "${cmd[@]}")
  echo "  ${cmd[*]}"
  [ "$mode" = print ] || "${cmd[@]}"
}

need_privileges() {
  if [ "$AS_UID" != 0 ] && ! command -v sudo >/dev/null; then
    echo "error: installing $* needs root or sudo, and sudo is not installed; run \`make install\` as root" >&2
    return 1
  fi
}

packages() {  # MISSING with the Java placeholder resolved
  local p out=()
  for p in "${MISSING[@]}"; do
    if [ "$p" = @java ]; then out+=("$(java_package)"); else out+=("$p"); fi
  done
  echo "${out[*]}"
}

# ---- commands -----------------------------------------------------------------------------

doctor() {
  LOW_DISK=0
  probe
  echo "mystocks-gpu doctor: what \`make demo\` / \`make test\` need"
  printf '  %s\n' "${REPORT[@]}"
  if [ "$AS_UID" = 0 ]; then
    echo "  apt-get runs as root (no sudo)"
  elif command -v sudo >/dev/null; then
    echo "  apt-get runs through sudo (uid $AS_UID)"
  else
    echo "  uid $AS_UID without sudo: run \`make install\` as root"
  fi
  if [ ${#MISSING[@]} -gt 0 ]; then
    echo "\`make install\` would run:"
    apt_cmd print update -qq
    # shellcheck disable=SC2046
    apt_cmd print install -y -qq --no-install-recommends $(packages)
    return 1
  fi
  [ "$LOW_DISK" = 0 ] || return 1
  echo "all present"
}

install() {
  LOW_DISK=0
  probe
  if [ ${#MISSING[@]} -eq 0 ]; then
    echo "system packages: all present"
    return 0
  fi
  need_privileges "${MISSING[*]}" || return 1
  echo "installing system packages:"
  apt_cmd run update -qq || { echo "error: apt-get update failed" >&2; return 1; }
  # shellcheck disable=SC2046
  apt_cmd run install -y -qq --no-install-recommends $(packages) \
    || { echo "error: apt-get install failed" >&2; return 1; }
  LOW_DISK=0
  probe
  if [ ${#MISSING[@]} -gt 0 ]; then
    printf '  %s\n' "${REPORT[@]}" | grep -v '^  ok' >&2
    echo "error: still missing after apt-get install: $(packages)" \
         "(for an old java on PATH: update-alternatives --config java)" >&2
    return 1
  fi
  echo "system packages: installed"
}

case "${1:-}" in
  doctor) doctor ;;
  install) install ;;
  *) echo "usage: $0 doctor|install" >&2; exit 2 ;;
esac
