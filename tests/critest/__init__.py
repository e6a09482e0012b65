"""critest's specs (kubernetes-sigs/cri-tools pkg/validate), mirrored against a real `crishim serve`."""
