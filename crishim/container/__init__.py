"""Containers: OCI specs, conmon and runc/crun, persisted records. Knows nothing of gRPC."""
