"""Pod networking on top of the `cni` library: kubelet's SetUpPod / TearDownPod, config loading, GC."""
