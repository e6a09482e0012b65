"""Pod sandboxes: pinned namespaces, CNI set-up and teardown, persisted records."""
