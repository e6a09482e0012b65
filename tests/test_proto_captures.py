"""Decodes real crictl <-> containerd 1.6 traffic with our CRI v1 schema.

A wrong field number or type in proto/ shows up here as an unknown field, a
value that differs from the reference JSON decode, or bytes that do not
re-encode to the captured ones.
"""

import base64
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format, message_factory
from google.protobuf.descriptor import Descriptor
from google.protobuf.message import Message
from google.protobuf.unknown_fields import UnknownFieldSet

from crishim.api.runtime.v1 import api_pb2

CAPTURE = Path("captures") / "crictl-containerd" / "raw"

# The capture's JSON decoder treated KeyValue.value (container env values) as bytes
# and printed it base64; the published schema and the wire say `string`.
BASE64_IN_CAPTURE_JSON = {"runtime.v1.KeyValue.value"}


def raw_dir() -> Path | None:
    """The shared captures live next to the clone; CRISHIM_SHARED overrides."""
    candidates = [Path(__file__).resolve().parents[2] / "shared"]
    if shared := os.environ.get("CRISHIM_SHARED"):
        candidates.insert(0, Path(shared))
    for base in candidates:
        if (base / CAPTURE / "index.json").is_file():
            return base / CAPTURE
    return None


@dataclass(frozen=True)
class Capture:
    path: Path
    message: Descriptor


def captures() -> list[Any]:
    root = raw_dir()
    if root is None:
        reason = f"no shared/{CAPTURE} next to the repo (set CRISHIM_SHARED to the shared dir)"
        return [pytest.param(None, marks=pytest.mark.skip(reason=reason), id="no-captures")]
    services = api_pb2.DESCRIPTOR.services_by_name
    cases = []
    for call in json.loads((root / "index.json").read_text()):
        method = services[call["service"].rpartition(".")[2]].methods_by_name[call["rpc"]]
        files = [(call["req_file"], method.input_type)]
        responses = call.get("resp_files") or [call.get("resp_file")]
        files += [(name, method.output_type) for name in responses if name]
        cases += [pytest.param(Capture(root / name, desc), id=name) for name, desc in files]
    return cases


def unknown_fields(msg: Message, where: str) -> list[str]:
    """Paths of every (sub)message that holds fields our schema does not know."""
    found = [where] if len(UnknownFieldSet(msg)) else []
    for field, value in msg.ListFields():
        if field.message_type is None:
            continue
        if field.message_type.GetOptions().map_entry:
            if field.message_type.fields_by_name["value"].message_type is not None:
                for key, item in value.items():
                    found += unknown_fields(item, f"{where}.{field.name}[{key!r}]")
        elif field.is_repeated:
            for i, item in enumerate(value):
                found += unknown_fields(item, f"{where}.{field.name}[{i}]")
        else:
            found += unknown_fields(value, f"{where}.{field.name}")
    return found


def as_capture_json(msg: Message) -> dict[str, Any]:
    """MessageToDict in the capture's conventions, including its base64 quirk."""
    out = json_format.MessageToDict(msg, preserving_proto_field_name=True)
    for field, value in msg.ListFields():
        if field.full_name in BASE64_IN_CAPTURE_JSON:
            out[field.name] = base64.b64encode(value.encode()).decode()
        elif field.message_type is None or field.message_type.GetOptions().map_entry:
            continue
        elif field.is_repeated:
            out[field.name] = [as_capture_json(item) for item in value]
        else:
            out[field.name] = as_capture_json(value)
    return out


def read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        pos, shift = pos + 1, shift + 7
        if not byte & 0x80:
            return value, pos


def wire_records(data: bytes, desc: Descriptor) -> list[bytes]:
    """Splits an encoded message into records; nested messages are split in turn and
    each run of map entries is sorted, since map order on the wire carries no meaning
    (Go clients emit maps in random order)."""
    records: list[tuple[int, bytes]] = []
    pos = 0
    while pos < len(data):
        start = pos
        key, pos = read_varint(data, pos)
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            _, pos = read_varint(data, pos)
        elif wire_type == 1:
            pos += 8
        elif wire_type == 5:
            pos += 4
        elif wire_type == 2:
            size, body = read_varint(data, pos)
            pos = body + size
            field = desc.fields_by_number.get(number)
            if field is not None and field.message_type is not None:
                inner = b"".join(wire_records(data[body:pos], field.message_type))
                records.append((number, data[start:body] + inner))
                continue
        else:
            raise AssertionError(f"wire type {wire_type} at byte {start} of {desc.full_name}")
        records.append((number, data[start:pos]))
    out: list[bytes] = []
    run: list[bytes] = []
    for i, (number, record) in enumerate(records):
        field = desc.fields_by_number.get(number)
        is_map = (
            field is not None
            and field.message_type is not None
            and (field.message_type.GetOptions().map_entry)
        )
        run.append(record)
        if not is_map or i + 1 == len(records) or records[i + 1][0] != number:
            out += sorted(run) if is_map else run
            run = []
    return out


@pytest.mark.parametrize("capture", captures())
def test_capture_decodes_exactly(capture: Capture) -> None:
    data = capture.path.read_bytes()
    cls = message_factory.GetMessageClass(capture.message)
    msg = cls.FromString(data)

    assert unknown_fields(msg, capture.message.name) == []

    reference = json.loads(capture.path.with_suffix(".json").read_text())
    assert as_capture_json(msg) == reference

    again = msg.SerializeToString(deterministic=True)
    if again != data:
        assert wire_records(again, capture.message) == wire_records(data, capture.message), (
            "re-encoding changed more than the order of map entries"
        )
