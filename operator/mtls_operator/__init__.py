"""mtls-operator: a mutual-TLS identity for every workload, from an in-cluster CA, renewed before it expires."""

__version__ = "0.1.0"
