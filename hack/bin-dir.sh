#!/usr/bin/env bash
# Prints where the built control-plane binaries live: $MTLS_BIN_DIR, or a per-user cache outside the checkout.
set -euo pipefail
echo "${MTLS_BIN_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/mtls-operator/bin}"
