"""Resolve the user a container runs as from the CRI security context, the image and its /etc files.

containerd's rules: the primary gid is always among the supplementary groups; under the Merge policy
the groups of the image's /etc/group that list the user by name come next (a group named as the user
is its own, not a supplementary one), then the requested `supplemental_groups`; under Strict only the
requested ones.
"""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass, field

from crishim.container.inroot import read_in_root
from crishim.errors import InvalidArgument

MAX_ID = 2**32 - 2  # (uid_t)-1 means "no change" to the kernel


class GroupsPolicy(enum.StrEnum):
    """CRI's SupplementalGroupsPolicy."""

    MERGE = "Merge"
    STRICT = "Strict"


@dataclass(frozen=True)
class User:
    uid: int
    gid: int
    # The process's supplementary groups, the primary gid first (as containerd's process.user).
    additional_gids: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class PasswdEntry:
    name: str
    uid: int
    gid: int


@dataclass(frozen=True)
class GroupEntry:
    name: str
    gid: int
    members: list[str]


def _is_id(text: str) -> bool:
    return text.isdigit() and int(text) <= MAX_ID


def parse_passwd(text: str) -> list[PasswdEntry]:
    """Well-formed lines only (as libc, a line with a bad field is skipped)."""
    entries = []
    for line in text.splitlines():
        parts = line.split(":")
        if len(parts) < 7 or not _is_id(parts[2]) or not _is_id(parts[3]):
            continue
        entries.append(PasswdEntry(parts[0], int(parts[2]), int(parts[3])))
    return entries


def parse_group(text: str) -> list[GroupEntry]:
    groups = []
    for line in text.splitlines():
        parts = line.split(":")
        if len(parts) < 4 or not _is_id(parts[2]):
            continue
        groups.append(GroupEntry(parts[0], int(parts[2]), [m for m in parts[3].split(",") if m]))
    return groups


def resolve_user(*, run_as_user: int | None, run_as_username: str, run_as_group: int | None,
                 supplemental_groups: list[int], image_user: str, passwd: str, group: str,
                 policy: GroupsPolicy = GroupsPolicy.MERGE) -> User:
    """Pure: the CRI fields win over the image's `User`; names are looked up in the rootfs's files."""
    _check_ids(run_as_user=[] if run_as_user is None else [run_as_user],
               run_as_group=[] if run_as_group is None else [run_as_group],
               supplemental_groups=supplemental_groups)
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
        match = next((g for g in groups if g.name == group_part), None)
        if match is None:
            raise InvalidArgument(f"group {group_part!r} is not in the image's /etc/group")
        gid = match.gid
    if max(uid, gid) > MAX_ID:
        raise InvalidArgument(f"the image's User {image_user!r} is beyond the Linux id range "
                              f"(0..{MAX_ID})")
    from_image: list[int] = []
    if entry is not None and policy == GroupsPolicy.MERGE:
        from_image = [g.gid for g in groups if g.name != entry.name and entry.name in g.members]
    return User(uid, gid, list(dict.fromkeys([gid, *from_image, *supplemental_groups])))


def _check_ids(**fields: list[int]) -> None:
    for name, ids in fields.items():
        bad = [i for i in ids if not 0 <= i <= MAX_ID]
        if bad:
            raise InvalidArgument(f"security_context.{name}: {bad[0]} is not a valid Linux id "
                                  f"(0..{MAX_ID})")


def read_user_files(rootfs: str | os.PathLike[str]) -> tuple[str, str]:
    """Blocking: /etc/passwd and /etc/group of a rootfs, resolved as if it were `/` (symlinks in the
    image, absolute or relative, never lead to the host's files); "" where missing."""
    texts = (read_in_root(os.fspath(rootfs), path) for path in ("/etc/passwd", "/etc/group"))
    passwd, group = ((data or b"").decode(errors="replace") for data in texts)
    return passwd, group
