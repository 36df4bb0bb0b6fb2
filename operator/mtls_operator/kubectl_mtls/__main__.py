"""`python -m mtls_operator.kubectl_mtls`: the same as the `kubectl-mtls` console script."""

from .cli import main

raise SystemExit(main())
