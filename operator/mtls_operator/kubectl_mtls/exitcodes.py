"""The plugin's exit codes, in one place: `--help` prints them from here and the README lists the same.

Scripts need to tell "looked, and it is not well" (1) from "could not look" (3): the first is an answer, the second
may pass on a retry or with more RBAC. A command line that was wrong, or a bulk renewal that was not confirmed, is 2
(argparse's own code for usage errors), and nothing was changed.
"""

from __future__ import annotations

OK = 0  # looked, and all is well (Ready, healthy, verified, renewal requested)
NOT_OK = 1  # looked, and something is not: not Ready, unhealthy, a Secret that does not verify or whose key misfits
USAGE = 2  # a wrong command line, or `renew --all -A` not confirmed: nothing was done
API_ERROR = 3  # could not look: not found, forbidden, unauthorized, cluster unreachable, no kubeconfig
INTERRUPTED = 130  # Ctrl-C, as shells report it

HELP = """exit codes:
  0  OK: Ready / healthy / verified / renewal requested
  1  looked, and it is not OK: not Ready, unhealthy, the Secret does not verify or its key does not match
  2  usage error, or `renew --all -A` not confirmed (nothing was done)
  3  API error: not found, forbidden (the missing RBAC verb and resource are named), unauthorized, cluster
     unreachable, no usable kubeconfig
  130 interrupted (Ctrl-C)"""
