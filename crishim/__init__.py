"""crishim: a Kubernetes CRI v1 runtime with CNI pod networking."""

__version__ = "0.1.0"
