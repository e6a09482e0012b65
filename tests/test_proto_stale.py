"""The committed CRI stubs must be what scripts/gen_proto.sh makes of proto/ today."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STUBS = Path("crishim/api/runtime/v1")
GENERATED = ("api_pb2.py", "api_pb2_grpc.py", "api_pb2.pyi")


def test_committed_stubs_match_proto(tmp_path: Path) -> None:
    """A proto edit without regeneration would silently serve the old schema."""
    env = {**os.environ, "PYTHON": sys.executable}
    done = subprocess.run(
        ["sh", str(REPO / "scripts" / "gen_proto.sh"), str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, f"scripts/gen_proto.sh failed:\n{done.stderr}"
    stale = [
        name
        for name in GENERATED
        if (tmp_path / STUBS / name).read_bytes() != (REPO / STUBS / name).read_bytes()
    ]
    assert not stale, f"{', '.join(stale)} out of date with proto/: run make proto"
