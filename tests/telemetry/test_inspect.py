"""`crishim inspect`: a pod's network set-up timeline, read from a running crishim."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from crishim.config import Config
from crishim.telemetry.inspect import inspect
from tests.harness import CrishimServer
from tests.sandbox.podutil import pod_config, run_pod, stop_and_remove


@pytest.mark.root
def test_inspect_shows_each_plugin_call(server: CrishimServer, capsys: pytest.CaptureFixture[str]) -> None:
    sandbox_id = run_pod(server, pod_config("inspected", namespace="tm"))
    config = Config(socket=str(server.socket))
    try:
        out = io.StringIO()
        assert inspect(config, "tm/inspected", out) == 0
        text = out.getvalue()
        assert f"id         {sandbox_id}" in text
        assert "state      READY" in text
        lines = [line.split() for line in text.splitlines() if line.startswith("  +")]
        assert [(words[-5], words[-4]) for words in lines] == [
            ("PIN", "namespaces"), ("ADD", "loopback"), ("ADD", "bridge"), ("ADD", "portmap")]
        assert all(words[-1] == "ok" for words in lines)

        by_prefix = io.StringIO()
        assert inspect(config, sandbox_id[:12], by_prefix) == 0
        assert by_prefix.getvalue() == text
    finally:
        stop_and_remove(server, sandbox_id)
    assert inspect(config, "tm/inspected", io.StringIO()) == 1
    assert "no pod sandbox" in capsys.readouterr().err


def test_inspect_without_a_server_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert inspect(Config(socket=str(tmp_path / "none.sock")), "web", io.StringIO()) == 1
    assert "cannot ask crishim" in capsys.readouterr().err
