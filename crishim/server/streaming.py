"""The streaming RPC families (Exec, Attach, PortForward), one module each."""

StreamingMixins: tuple[type, ...] = ()
