"""Container manager tests on real runc, crun and conmon."""
