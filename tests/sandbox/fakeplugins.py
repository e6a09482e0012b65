"""Fake CNI plugins, only for faults the real plugins cannot produce on demand.

Each is a small shell script driven by flag files in its own directory, so a test can switch a fault on
and off while crishim runs.
"""

from __future__ import annotations

from pathlib import Path

# Passes the previous result through on ADD (a well-behaved chained plugin), and fails, hangs (ADD or
# DEL) or takes a second (DEL) when the test drops a flag file next to it.
FAKE_PLUGIN = r"""#!/bin/sh
dir=$(dirname "$0")
name=$(basename "$0")
input=$(cat)
echo "$CNI_COMMAND $CNI_CONTAINERID" >> "$dir/$name.calls"
fail() {
  printf '{"cniVersion":"1.0.0","code":%s,"msg":"%s","details":"%s"}' "$1" "$2" "$3"
  exit 1
}
case "$CNI_COMMAND" in
VERSION)
  echo '{"cniVersion":"1.0.0","supportedVersions":["0.3.0","0.3.1","0.4.0","1.0.0"]}' ;;
ADD)
  [ -f "$dir/$name.add-fails" ] && fail 100 "injected ADD failure" "flag $name.add-fails is set"
  if [ -f "$dir/$name.add-hangs" ]; then
    echo $$ > "$dir/$name.pid"
    exec sleep 300
  fi
  printf '%s' "$input" |
    python3 -c 'import json,sys; print(json.dumps(json.load(sys.stdin)["prevResult"]))' ;;
STATUS)
  [ -f "$dir/$name.status-fails" ] && fail 50 "injected STATUS failure" "plugin not available"
  exit 0 ;;
DEL)
  [ -f "$dir/$name.del-fails" ] && fail 101 "injected DEL failure" "flag $name.del-fails is set"
  [ -f "$dir/$name.del-slow" ] && sleep 1
  if [ -f "$dir/$name.del-hangs" ]; then
    echo $$ > "$dir/$name.pid"
    exec sleep 300
  fi
  exit 0 ;;
*)
  exit 0 ;;
esac
"""


class FakePlugin:
    def __init__(self, bin_dir: Path, name: str = "fake") -> None:
        self.dir = bin_dir
        self.name = name
        bin_dir.mkdir(parents=True, exist_ok=True)
        path = bin_dir / name
        path.write_text(FAKE_PLUGIN)
        path.chmod(0o755)

    def flag(self, fault: str, on: bool = True) -> None:
        path = self.dir / f"{self.name}.{fault}"
        if on:
            path.touch()
        else:
            path.unlink(missing_ok=True)

    def calls(self) -> list[str]:
        path = self.dir / f"{self.name}.calls"
        return path.read_text().splitlines() if path.exists() else []

    @property
    def pid_file(self) -> Path:
        return self.dir / f"{self.name}.pid"
