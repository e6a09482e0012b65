"""Crash-safe on-disk records."""

from crishim.store.atomic import read_json, remove_file, write_bytes_atomic, write_json_atomic
from crishim.store.private import RUN_DIR, private_dir
from crishim.store.recordlog import RecordLog
from crishim.store.syncer import Syncer

__all__ = ["RUN_DIR", "RecordLog", "Syncer", "private_dir", "read_json", "remove_file", "write_bytes_atomic",
           "write_json_atomic"]
