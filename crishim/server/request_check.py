"""Refuse NUL in every string of a request, naming the field.

No environment variable, argument, file name or path can carry a NUL, and a CRI string field accepts it
(it is valid UTF-8). One walk over the whole message catches every field, including those added to the
schema later, instead of a check per field that the next field would miss.
"""

from __future__ import annotations

from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper
from google.protobuf.message import Message

from crishim.errors import InvalidArgument
from crishim.limits import shown


def reject_nul(message: Message, path: str) -> None:
    for field, value in message.ListFields():
        name = f"{path}.{field.name}" if path else field.name
        entry_type = field.message_type
        if entry_type is not None and entry_type.GetOptions().map_entry:
            value_field = entry_type.fields_by_name["value"]
            for key, item in value.items():
                entry = f"{name}[{shown(key)}]"
                _check(entry + " (key)", key)
                _check_value(value_field, item, entry)
        elif field.is_repeated:
            for index, item in enumerate(value):
                _check_value(field, item, f"{name}[{index}]")
        else:
            _check_value(field, value, name)


def _check_value(field: FieldDescriptor, value: Any, name: str) -> None:
    if field.type == FieldDescriptor.TYPE_STRING:
        _check(name, value)
    elif field.type == FieldDescriptor.TYPE_MESSAGE:
        reject_nul(value, name)


def enum_name(enum: EnumTypeWrapper, value: int, field: str) -> str:
    """The name of an enum value; proto3 enums are open, so a client may send any number."""
    try:
        return str(enum.Name(value))
    except ValueError:
        raise InvalidArgument(f"{field} {value} is not one of {', '.join(enum.keys())}") from None


def _check(name: str, value: Any) -> None:
    if isinstance(value, str) and "\0" in value:
        raise InvalidArgument(f"{name} must not contain a NUL character")
