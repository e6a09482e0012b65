"""The stats, events and metrics RPC families, one module each."""

ObservabilityMixins: tuple[type, ...] = ()
