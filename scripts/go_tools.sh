#!/usr/bin/env bash
# The Go tools the Kubernetes manifest checks use, pinned and installed with `go install` from the
# Go module proxy; prints the directory of the binaries. Everything Go downloads or builds stays
# under $CACHE_DIR (default ~/.cache/mystocks-gpu): GOPATH=$CACHE_DIR/go (module cache
# $CACHE_DIR/go/pkg/mod, binaries $CACHE_DIR/go/bin), GOCACHE=$CACHE_DIR/go-build; never ~/go.
# Idempotent: a binary already built from the pinned module version is kept (`go version -m`).
# A Go older than the tools need (1.22) fetches the newer toolchain itself (GOTOOLCHAIN=auto, the
# toolchain is a module of the Go module proxy), from Go 1.21 on.
#   kubeconform  validates the manifests (strict) against the vendored schemas in deploy/k8s/schemas
#   kustomize    builds the overlays deploy/k8s/overlays/{dev,gpu}
set -euo pipefail
KUBECONFORM=v0.7.0
KUSTOMIZE=v5.7.1
# the toolchain a Go older than 1.21 fetches: the Go of this project's machines (newer Go versions
# fetch what the tools ask for themselves)
BOOT_TOOLCHAIN=go1.26.8
if ! command -v go >/dev/null; then
  echo "error: Go is needed to install kubeconform and kustomize with \`go install\` (the manifest checks; apt package golang-go)" >&2
  exit 1
fi
CACHE_DIR=${CACHE_DIR:-$HOME/.cache/mystocks-gpu}
mkdir -p "$CACHE_DIR"
export GOPATH=$CACHE_DIR/go GOMODCACHE=$CACHE_DIR/go/pkg/mod GOCACHE=$CACHE_DIR/go-build
export GOFLAGS="${GOFLAGS:-} -modcacherw" GOTOOLCHAIN=${GOTOOLCHAIN:-auto}
minor=$(go env GOVERSION | sed -n 's/^go1\.\([0-9]*\).*/\1/p')
if [ "${minor:-0}" -lt 21 ]; then
  # Go < 1.21 (Debian 12's golang-go is 1.19) cannot switch toolchains: take the toolchain as Go
  # 1.21+ does, the module golang.org/toolchain from the Go module proxy, into the module cache
  tc="v0.0.1-$BOOT_TOOLCHAIN.$(go env GOOS)-$(go env GOARCH)"
  echo "$(go env GOVERSION) is older than 1.21: using the $BOOT_TOOLCHAIN toolchain module ($tc)" >&2
  dir=$(cd "$CACHE_DIR" && GO111MODULE=on go mod download -json "golang.org/toolchain@$tc" \
        | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
  if [ -z "$dir" ] || [ ! -f "$dir/bin/go" ]; then
    echo "error: could not fetch golang.org/toolchain@$tc from the Go module proxy" >&2
    exit 1
  fi
  # module zips carry no file modes: make the toolchain's programs executable, as Go itself does
  chmod -R u+w "$dir" && chmod +x "$dir"/bin/* "$dir"/pkg/tool/*/*
  export PATH=$dir/bin:$PATH GOTOOLCHAIN=local
fi
bin=$GOPATH/bin
built() {  # built TOOL MODULE VERSION: the binary exists and was built from MODULE@VERSION
  [ -x "$bin/$1" ] && go version -m "$bin/$1" 2>/dev/null | grep -qE "^[[:space:]]+mod[[:space:]]+$2[[:space:]]+$3([[:space:]]|$)"
}
built kubeconform github.com/yannh/kubeconform "$KUBECONFORM" \
  || GOBIN=$bin go install "github.com/yannh/kubeconform/cmd/kubeconform@$KUBECONFORM" >&2
built kustomize sigs.k8s.io/kustomize/kustomize/v5 "$KUSTOMIZE" \
  || GOBIN=$bin go install "sigs.k8s.io/kustomize/kustomize/v5@$KUSTOMIZE" >&2
echo "$bin"
