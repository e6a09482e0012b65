"""The gRPC layer: thin servicers that turn CRI messages into calls on the runtime's domain modules."""
