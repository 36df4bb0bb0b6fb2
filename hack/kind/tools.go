//go:build tools

// Package tools pins the kind command line, built from its published Go module (release binaries cannot be fetched).
package tools

import _ "sigs.k8s.io/kind"
