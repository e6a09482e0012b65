"""Finding and running plugin binaries (R-CNI-3, R-CNI-4, R-CNI-12)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import signal
from collections.abc import Mapping, Sequence

from cni.errors import INTERNAL, INVALID_ENVIRONMENT, CNIError

# libcni retries exec 5 times, 1 s apart, while the binary is being replaced (ETXTBSY).
TEXT_BUSY_RETRIES = 5
TEXT_BUSY_DELAY = 1.0


def find_in_path(plugin: str, paths: Sequence[str]) -> str:
    """Resolve a plugin like libcni's FindInPath: first *regular file* ``dir/plugin`` wins.

    No exec-bit check, so a non-executable binary fails at exec time with a clear error rather
    than being silently skipped.
    """
    if not plugin:
        raise CNIError("no plugin name provided", code=INVALID_ENVIRONMENT)
    if os.sep in plugin:
        raise CNIError(f"invalid plugin name: {plugin}", code=INVALID_ENVIRONMENT)
    if not paths:
        raise CNIError("no paths provided", code=INVALID_ENVIRONMENT)
    for directory in paths:
        candidate = os.path.join(directory, plugin)
        with contextlib.suppress(OSError):
            if os.path.isfile(candidate):
                return candidate
    raise CNIError(f'failed to find plugin "{plugin}" in path [{" ".join(paths)}]')


def plugin_env(cni_vars: Mapping[str, str]) -> dict[str, str]:
    """Inherited environment with the ``CNI_*`` variables applied last (libcni AsEnv)."""
    env = dict(os.environ)
    env.update(cni_vars)
    return env


def _kill_group(proc: asyncio.subprocess.Process) -> None:
    """Kill the plugin and anything it forked (it runs in its own session)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


async def _spawn(argv: Sequence[str], env: Mapping[str, str]) -> asyncio.subprocess.Process:
    attempt = 0
    while True:
        try:
            return await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=dict(env),
                start_new_session=True,
            )
        except OSError as e:
            if e.errno != errno.ETXTBSY or attempt == TEXT_BUSY_RETRIES:
                raise CNIError(f"cannot execute {argv[0]}: {e.strerror or e}") from None
        attempt += 1
        await asyncio.sleep(TEXT_BUSY_DELAY)


async def run_plugin(argv: Sequence[str], env: Mapping[str, str], stdin: bytes, limit: float) -> bytes:
    """Run one plugin, returning its stdout; any failure becomes a :class:`CNIError`.

    On timeout or cancellation the whole process group is killed so no plugin is left behind.
    """
    proc = await _spawn(argv, env)
    try:
        async with asyncio.timeout(limit):
            stdout, stderr = await proc.communicate(stdin)
    except TimeoutError:
        _kill_group(proc)
        await proc.wait()
        raise CNIError(f"timed out after {limit:g}s; the plugin was killed") from None
    except BaseException:
        _kill_group(proc)
        await proc.wait()
        raise
    rc = proc.returncode
    assert rc is not None
    if rc == 0:
        return stdout
    raise plugin_failure(stdout, stderr, rc)


def _exit_text(rc: int) -> str:
    if rc < 0:
        try:
            return f"killed by signal {signal.Signals(-rc).name}"
        except ValueError:
            return f"killed by signal {-rc}"
    return f"exit status {rc}"


def plugin_failure(stdout: bytes, stderr: bytes, rc: int) -> CNIError:
    """Turn a failed plugin run into an error, preferring the spec's error JSON on stdout."""
    err_text = stderr.decode(errors="replace").strip()
    out_text = stdout.decode(errors="replace").strip()
    if not out_text:
        if err_text:
            return CNIError(f'netplugin failed: "{err_text}": {_exit_text(rc)}', stderr=err_text)
        return CNIError(f"netplugin failed with no error message: {_exit_text(rc)}")
    try:
        obj = json.loads(out_text)
    except json.JSONDecodeError:
        obj = None
    if not isinstance(obj, dict) or not isinstance(obj.get("msg", obj.get("code")), str | int):
        return CNIError(
            "netplugin failed but error parsing its diagnostic message",
            details=f"{_exit_text(rc)}, stdout: {out_text[:500]!r}",
            stderr=err_text,
        )
    code = obj.get("code")
    return CNIError(
        str(obj.get("msg") or ""),
        code=code if isinstance(code, int) else INTERNAL,
        details=str(obj.get("details") or ""),
        stderr=err_text,
    )
