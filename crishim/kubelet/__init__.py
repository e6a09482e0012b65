"""`crishim pod`: run one Pod manifest against any CRI endpoint the way kubelet would, without a cluster.

A CRI client only (crishim.api stubs): it never imports crishim's server side, so it drives containerd or
CRI-O just as well. manifest.py parses the YAML into typed values, requests.py builds kubelet's CRI
messages (pure), actions.py decides what a sync does, worker.py runs the pod (sync loop, probes,
back-off, graceful delete), commands.py is what the CLI calls.
"""
