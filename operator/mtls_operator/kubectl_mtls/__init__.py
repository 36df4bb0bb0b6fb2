"""`kubectl mtls`: a kubectl plugin (console script `kubectl-mtls`) for the people who use the operator, not for the
operator itself. It runs with the user's kubeconfig and RBAC and only reads, except `renew`, which sets the same
annotation a user would set by hand.

Layout — pure logic apart from API I/O, so everything but `api.py` is unit-tested without a cluster:

- `cli.py`: the command line (argparse), dispatch, output and exit codes;
- `api.py`: the few API reads and the one write, and errors turned into what to tell the user (which RBAC verb);
- `identity.py`: an MtlsIdentity's status and Events, made into a report (pure);
- `inspect.py`: what an identity Secret holds, from its bytes: chain, names, key fit, verification (pure);
- `health.py`: the verdicts of `check` on the operator's pods, its Lease, the CA and the identities (pure);
- `hints.py`: what to do about each failure reason — the one table;
- `render.py`: the reports as text (the JSON shape is each report's `to_dict`);
- `exitcodes.py`: the exit codes, shared by `--help` and the code.
"""
