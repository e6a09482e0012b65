"""Domain errors: raised by the runtime modules, turned into gRPC status codes by the server.

Keeping the mapping in one place lets `sandbox/`, `container/`, `image/` and `network/` stay free of gRPC.
"""


class CrishimError(Exception):
    """Base class; the server answers INTERNAL for it."""


class InvalidArgument(CrishimError):
    """The request itself is wrong (a missing field, a bad value)."""


class NotFound(CrishimError):
    """The object named by the request does not exist."""


class AlreadyExists(CrishimError):
    """The object the request would create exists already."""


class FailedPrecondition(CrishimError):
    """The object exists but is not in a state that allows the request."""


class Unavailable(CrishimError):
    """A dependency (registry, network plugin) cannot be reached right now; retrying may help."""


class DeadlineExceeded(CrishimError):
    """An operation ran past its time limit."""


class ResourceExhausted(CrishimError):
    """A limit was hit (output too large, no free port)."""


class NetworkError(CrishimError):
    """A CNI plugin failed to set up or tear down a pod's network; the message names the plugin."""
