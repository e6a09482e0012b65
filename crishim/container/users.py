"""Resolve the user a container runs as from the CRI security context, the image and its /etc files."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from crishim.errors import InvalidArgument


@dataclass(frozen=True)
class User:
    uid: int
    gid: int
    additional_gids: list[int] = field(default_factory=list)
    home: str = "/"


@dataclass(frozen=True)
class PasswdEntry:
    name: str
    uid: int
    gid: int
    home: str


def parse_passwd(text: str) -> list[PasswdEntry]:
    entries = []
    for line in text.splitlines():
        parts = line.split(":")
        if len(parts) < 7 or not parts[2].isdigit() or not parts[3].isdigit():
            continue
        entries.append(PasswdEntry(parts[0], int(parts[2]), int(parts[3]), parts[5] or "/"))
    return entries


def parse_group(text: str) -> list[tuple[str, int, list[str]]]:
    """(name, gid, members) per well-formed line."""
    groups = []
    for line in text.splitlines():
        parts = line.split(":")
        if len(parts) < 4 or not parts[2].isdigit():
            continue
        members = [m for m in parts[3].split(",") if m]
        groups.append((parts[0], int(parts[2]), members))
    return groups


def resolve_user(*, run_as_user: int | None, run_as_username: str, run_as_group: int | None,
                 supplemental_groups: list[int], image_user: str, passwd: str,
                 group: str) -> User:
    """Pure: the CRI fields win over the image's `User`; names are looked up in the rootfs's files."""
    users = parse_passwd(passwd)
    groups = parse_group(group)
    if run_as_group is not None and run_as_user is None and not run_as_username:
        raise InvalidArgument("run_as_group is set without run_as_user or run_as_username")
    user_part, _, group_part = image_user.partition(":")
    if run_as_user is not None or run_as_username:
        user_part = str(run_as_user) if run_as_user is not None else run_as_username
        group_part = ""
    entry: PasswdEntry | None = None
    if not user_part:
        uid = 0
    elif user_part.isdigit():
        uid = int(user_part)
    else:
        entry = next((u for u in users if u.name == user_part), None)
        if entry is None:
            raise InvalidArgument(f"user {user_part!r} is not in the image's /etc/passwd")
        uid = entry.uid
    if entry is None:
        entry = next((u for u in users if u.uid == uid), None)
    gid = entry.gid if entry else 0
    if run_as_group is not None:
        gid = run_as_group
    elif group_part.isdigit():
        gid = int(group_part)
    elif group_part:
        match = next((g for g in groups if g[0] == group_part), None)
        if match is None:
            raise InvalidArgument(f"group {group_part!r} is not in the image's /etc/group")
        gid = match[1]
    extra: list[int] = []
    if entry is not None:
        extra = [g[1] for g in groups if entry.name in g[2]]
    additional = [g for g in dict.fromkeys([*extra, *supplemental_groups]) if g != gid]
    return User(uid, gid, additional, entry.home if entry else "/")


def read_user_files(rootfs: Path) -> tuple[str, str]:
    """Blocking: /etc/passwd and /etc/group of a rootfs, "" where missing; never follows links out."""
    texts = []
    for name in ("passwd", "group"):
        path = rootfs / "etc" / name
        try:
            if path.is_symlink() or not path.is_file():
                texts.append("")
                continue
            texts.append(path.read_text(errors="replace"))
        except OSError:
            texts.append("")
    return texts[0], texts[1]
