"""The container RPC families, one module each."""

ContainerMixins: tuple[type, ...] = ()
