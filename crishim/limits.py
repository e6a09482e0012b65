"""What a request may carry into a plugin's environment, a process's argv, a file or a path: decided here.

Linux caps one argv or environment string at MAX_ARG_STRLEN (128 KiB) and all of them together at
ARG_MAX (2 MiB here); a path at PATH_MAX. A value past these would fail only when crishim execs a plugin
or a runtime, half-way through creating a pod or a container, so the checks below refuse it up front
with a message naming the field. (NUL, which none of these can carry, is refused for every string of a
request by crishim.server.request_check.)
"""

from __future__ import annotations

import posixpath
import unicodedata

from crishim.errors import InvalidArgument

# Pod name, namespace and uid, container name: a DNS subdomain's length (Kubernetes' own bound). They
# travel in CNI_ARGS and conmon's argv, so this also keeps both far below ARG_MAX.
NAME_MAX_BYTES = 253
# A path on the node (log directory, log path, cgroup parent): PATH_MAX less its NUL.
PATH_MAX_BYTES = 4095
# One value written to a file: a sysctl, a DNS option or search domain.
VALUE_MAX_BYTES = 4096
# A container's command, args and environment together (execve's limit is ARG_MAX = 2 MiB), and each of
# them (MAX_ARG_STRLEN is 128 KiB, "NAME=value" included).
ARGV_MAX_BYTES = 1024 * 1024
ARG_MAX_BYTES = 128 * 1024 - 1
# How much of a refused value an error message quotes.
SHOWN_MAX_CHARS = 80

# Characters that would change the meaning of a name wherever it lands: CNI_ARGS separators (';', '='),
# path separators, and white space (fields of resolv.conf, hosts, conmon's log lines).
_NAME_FORBIDDEN = frozenset(";=/")


def shown(value: str) -> str:
    """A value for an error message, which travels in gRPC metadata: a name a megabyte long is told by
    its start and its length."""
    if len(value) <= SHOWN_MAX_CHARS:
        return repr(value)
    return f"{value[:SHOWN_MAX_CHARS]!r}… ({size(value)} bytes)"


def size(value: str) -> int:
    return len(value.encode("utf-8", "surrogatepass"))


def check_size(field: str, value: str, limit: int) -> None:
    if size(value) > limit:
        raise InvalidArgument(f"{field} is {size(value)} bytes long; at most {limit} are allowed")


def check_name(field: str, value: str) -> None:
    """A required name that becomes a CNI argument, a process argument or part of a file name."""
    if not value:
        raise InvalidArgument(f"{field} is required")
    check_size(field, value, NAME_MAX_BYTES)
    if value in (".", "..") or any(c in _NAME_FORBIDDEN or c.isspace() or _is_control(c) for c in value):
        raise InvalidArgument(
            f"{field} {shown(value)} must not be '.' or '..' nor contain ';', '=', '/', white space or "
            "control characters")


def check_absolute_path(field: str, value: str) -> None:
    """A path on the node: absolute, without '..' (it must mean what it says)."""
    check_size(field, value, PATH_MAX_BYTES)
    if not value.startswith("/"):
        raise InvalidArgument(f"{field} {shown(value)} must be an absolute path")
    if ".." in value.split("/"):
        raise InvalidArgument(f"{field} {shown(value)} must not contain '..'")


def check_relative_path(field: str, value: str) -> None:
    """A path below some directory: relative, and it stays below it."""
    check_size(field, value, PATH_MAX_BYTES)
    if value.startswith("/"):
        raise InvalidArgument(f"{field} {shown(value)} must be a relative path")
    if ".." in value.split("/") or posixpath.normpath(value) in (".", ""):
        raise InvalidArgument(f"{field} {shown(value)} must name a file below its directory, without '..'")


def check_token(field: str, value: str) -> None:
    """A value written into a line of a text file as one word: no white space or control characters."""
    check_size(field, value, VALUE_MAX_BYTES)
    if not value or any(c.isspace() or _is_control(c) for c in value):
        raise InvalidArgument(f"{field} {shown(value)} must be non-empty, without white space or control "
                              "characters")


def check_line(field: str, value: str) -> None:
    """A value written to a file as one line: no line breaks or other control characters."""
    check_size(field, value, VALUE_MAX_BYTES)
    if any(_is_control(c) or c in "\u2028\u2029" for c in value):
        raise InvalidArgument(f"{field} {shown(value)} must be one line, without control characters")


def _is_control(c: str) -> bool:
    return unicodedata.category(c) == "Cc"
