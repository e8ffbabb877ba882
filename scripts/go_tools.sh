#!/usr/bin/env bash
# The Go tools the Kubernetes manifest checks use, pinned and installed with `go install` from the
# Go module proxy into $GOBIN (default: `go env GOPATH`/bin); prints that directory. Idempotent: a
# binary already built from the pinned module version is kept (read with `go version -m`).
#   kubeconform  validates the manifests (strict) against the vendored schemas in deploy/k8s/schemas
#   kustomize    builds the overlays deploy/k8s/overlays/{dev,gpu}
set -euo pipefail
KUBECONFORM=v0.7.0
KUSTOMIZE=v5.7.1
if ! command -v go >/dev/null; then
  echo "error: Go (1.22+) is needed to install kubeconform and kustomize with \`go install\` (the manifest checks)" >&2
  exit 1
fi
bin=${GOBIN:-$(go env GOPATH)/bin}
built() {  # built TOOL MODULE VERSION: the binary exists and was built from MODULE@VERSION
  [ -x "$bin/$1" ] && go version -m "$bin/$1" 2>/dev/null | grep -qE "^[[:space:]]+mod[[:space:]]+$2[[:space:]]+$3([[:space:]]|$)"
}
built kubeconform github.com/yannh/kubeconform "$KUBECONFORM" \
  || GOBIN=$bin go install "github.com/yannh/kubeconform/cmd/kubeconform@$KUBECONFORM" >&2
built kustomize sigs.k8s.io/kustomize/kustomize/v5 "$KUSTOMIZE" \
  || GOBIN=$bin go install "sigs.k8s.io/kustomize/kustomize/v5@$KUSTOMIZE" >&2
echo "$bin"
