"""Typed CNI errors: one exception type so callers can branch on the spec's error codes."""

from __future__ import annotations

INCOMPATIBLE_VERSION = 1
UNSUPPORTED_FIELD = 2
UNKNOWN_CONTAINER = 3
INVALID_ENVIRONMENT = 4
IO_FAILURE = 5
DECODE_FAILURE = 6
INVALID_NETWORK_CONFIG = 7
INVALID_NETNS = 8
TRY_AGAIN_LATER = 11
STATUS_NOT_AVAILABLE = 50
STATUS_LIMITED_CONNECTIVITY = 51
INTERNAL = 999


class CNIError(Exception):
    """A failed CNI operation, carrying the plugin's error result verbatim.

    ``code``/``msg``/``details`` come from the plugin's error JSON when it printed one; otherwise
    ``code`` is :data:`INTERNAL` and ``msg`` explains what went wrong (exit status, timeout, ...).
    ``hint`` names a known plugin defect when the failure matches one.
    """

    def __init__(
        self,
        msg: str,
        *,
        code: int = INTERNAL,
        details: str = "",
        plugin_type: str = "",
        network: str = "",
        verb: str = "",
        stderr: str = "",
        hint: str = "",
    ) -> None:
        self.code = code
        self.msg = msg
        self.details = details
        self.plugin_type = plugin_type
        self.network = network
        self.verb = verb
        self.stderr = stderr
        self.hint = hint
        super().__init__(str(self))

    @property
    def temporary(self) -> bool:
        """True for the spec's "try again later" code (11)."""
        return self.code == TRY_AGAIN_LATER

    def __str__(self) -> str:
        text = self.msg
        if self.details:
            text = f"{text}: {self.details}"
        if self.plugin_type:
            verb = self.verb.lower() or "exec"
            text = f'plugin type="{self.plugin_type}" name="{self.network}" failed ({verb}): {text}'
        if self.hint:
            text = f"{text} (hint: {self.hint})"
        return text


class ConfigError(ValueError):
    """A network configuration that cannot be used; the text says which file and why."""
