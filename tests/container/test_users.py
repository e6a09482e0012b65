"""Who a container runs as: the pure rules (containerd's), the /etc files read inside the image's rootfs,
and the CRI conversions around them. The real containers are in test_users_e2e.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crishim.api.runtime.v1 import api_pb2
from crishim.container.model import Container, ContainerSpec, SecurityContext
from crishim.container.users import MAX_ID, GroupsPolicy, User, read_user_files, resolve_user
from crishim.errors import InvalidArgument
from crishim.server.container_convert import spec_from_config, to_status

PASSWD = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001:app:/home/app:/bin/sh\nbroken line\n"
# `app` is listed in wheel and video; a group named as the user is not a supplementary one even where
# it lists the user (containerd skips it), the user's primary group comes in through its gid.
GROUP = "root:x:0:\napp:x:1001:app\nwheel:x:10:app,other\nvideo:x:44:app\naudio:x:77:app\n" \
        "other:x:99:app\n"
GROUP_SAME_NAME = "app:x:55:app\nstaff:x:50:app\n"


def resolve(**kw: Any) -> User:
    args: dict[str, Any] = {"run_as_user": None, "run_as_username": "", "run_as_group": None,
                            "supplemental_groups": [], "image_user": "", "passwd": PASSWD,
                            "group": GROUP}
    args.update(kw)
    return resolve_user(**args)


def test_primary_gid_first_then_image_groups_then_requested() -> None:
    assert resolve() == User(0, 0, [0])
    assert resolve(run_as_user=1000) == User(1000, 1001, [1001, 10, 44, 77, 99])
    assert resolve(run_as_username="app", run_as_group=5, supplemental_groups=[44, 7]) == \
        User(1000, 5, [5, 10, 44, 77, 99, 7])
    assert resolve(image_user="app") == User(1000, 1001, [1001, 10, 44, 77, 99])
    # No passwd entry for the uid: gid 0 and no image groups, as containerd.
    assert resolve(run_as_user=4242, supplemental_groups=[3000]) == User(4242, 0, [0, 3000])
    assert resolve(image_user="app", run_as_user=0) == User(0, 0, [0])


def test_group_named_as_the_user_is_skipped() -> None:
    assert resolve(image_user="app", group=GROUP_SAME_NAME) == User(1000, 1001, [1001, 50])


def test_strict_policy_keeps_only_the_requested_groups() -> None:
    strict = GroupsPolicy.STRICT
    assert resolve(run_as_user=1000, supplemental_groups=[1234], policy=strict) == \
        User(1000, 1001, [1001, 1234])
    assert resolve(image_user="app", policy=strict) == User(1000, 1001, [1001])
    assert resolve(run_as_username="app", run_as_group=5, supplemental_groups=[5, 6],
                   policy=strict) == User(1000, 5, [5, 6])


def test_group_part_of_the_image_user() -> None:
    assert resolve(image_user="app:wheel").gid == 10
    assert resolve(image_user="1000:7") == User(1000, 7, [7, 10, 44, 77, 99])
    with pytest.raises(InvalidArgument, match="'ghosts' is not in the image's /etc/group"):
        resolve(image_user="app:ghosts")


def test_bad_requests_name_the_field() -> None:
    with pytest.raises(InvalidArgument, match="run_as_group"):
        resolve(run_as_group=5)
    with pytest.raises(InvalidArgument, match="'ghost' is not in the image's /etc/passwd"):
        resolve(run_as_username="ghost")
    with pytest.raises(InvalidArgument, match="user 'app' is not in"):
        resolve(image_user="app", passwd="")
    for field, value in (("run_as_user", -1), ("run_as_group", 2**32 - 1)):
        with pytest.raises(InvalidArgument, match=rf"security_context\.{field}:"):
            resolve(**{"run_as_user": 0, field: value})
    with pytest.raises(InvalidArgument, match=r"security_context\.supplemental_groups: -3"):
        resolve(supplemental_groups=[1, -3])
    for image_user in ("4294967295", "0:4294967295"):
        with pytest.raises(InvalidArgument, match=f"the image's User '{image_user}' is beyond"):
            resolve(image_user=image_user)
    # Image entries out of range are malformed lines, skipped.
    with pytest.raises(InvalidArgument, match="user 'big' is not in"):
        resolve(image_user="big", passwd="big:x:1:4294967296::/:/bin/sh\n")
    assert resolve(group="big:x:4294967296:root\n") == User(0, 0, [0])


@given(uid=st.integers(0, MAX_ID), groups=st.lists(st.integers(0, MAX_ID), max_size=8),
       strict=st.booleans())
def test_groups_are_unique_and_start_with_the_gid(uid: int, groups: list[int], strict: bool) -> None:
    policy = GroupsPolicy.STRICT if strict else GroupsPolicy.MERGE
    user = resolve(run_as_user=uid, supplemental_groups=groups, policy=policy)
    assert user.additional_gids[0] == user.gid
    assert len(set(user.additional_gids)) == len(user.additional_gids)
    assert set(groups) <= set(user.additional_gids)


def make_rootfs(tmp_path: Path) -> tuple[Path, Path]:
    host = tmp_path / "host"
    host.mkdir()
    (host / "passwd").write_text("app:x:4343:4343::/:/bin/sh\n")
    (host / "group").write_text("spy:x:4344:app\n")
    root = tmp_path / "rootfs"
    (root / "usr/share").mkdir(parents=True)
    return host, root


def test_etc_as_absolute_symlink_to_a_host_dir_reads_nothing_of_the_host(tmp_path: Path) -> None:
    host, root = make_rootfs(tmp_path)
    (root / "etc").symlink_to(host)
    assert read_user_files(str(root)) == ("", "")
    # Inside the image the link names <rootfs><host>: an image may really hold its files there.
    (root / str(host).lstrip("/")).mkdir(parents=True)
    (root / str(host).lstrip("/") / "passwd").write_text("app:x:5:5::/:/bin/sh\n")
    assert read_user_files(str(root)) == ("app:x:5:5::/:/bin/sh\n", "")


def test_passwd_as_relative_symlink_is_followed_inside(tmp_path: Path) -> None:
    _, root = make_rootfs(tmp_path)
    (root / "usr/share/passwd").write_text("app:x:4243:4243::/:/bin/sh\n")
    (root / "usr/share/group").write_text("staff:x:4242:app\n")
    (root / "etc").mkdir()
    (root / "etc/passwd").symlink_to("../usr/share/passwd")
    (root / "etc/group").symlink_to("../../../../usr/share/group")
    passwd, group = read_user_files(str(root))
    assert resolve(image_user="app", passwd=passwd, group=group) == User(4243, 4243, [4243, 4242])


def test_files_that_are_not_regular_files(tmp_path: Path) -> None:
    _, root = make_rootfs(tmp_path)
    (root / "etc/passwd").mkdir(parents=True)
    (root / "etc/group").write_bytes(b"g\xff:x:1:app\n")
    assert read_user_files(str(root)) == ("", "g\ufffd:x:1:app\n")


def sc_config(**sc: Any) -> api_pb2.ContainerConfig:
    return api_pb2.ContainerConfig(
        metadata=api_pb2.ContainerMetadata(name="c"), image=api_pb2.ImageSpec(image="i"),
        linux=api_pb2.LinuxContainerConfig(
            security_context=api_pb2.LinuxContainerSecurityContext(**sc)))


def test_policy_from_cri_and_back_through_the_record() -> None:
    assert spec_from_config(sc_config()).security.supplemental_groups_policy == GroupsPolicy.MERGE
    strict = spec_from_config(sc_config(supplemental_groups_policy=api_pb2.Strict))
    assert strict.security.supplemental_groups_policy == GroupsPolicy.STRICT
    assert ContainerSpec.from_json(Container(
        id="x", sandbox_id="s", spec=strict, image_id="i", runtime_handler="runc", dir="/d",
        log_path="", created_at=0).to_json()["spec"]) == strict
    with pytest.raises(InvalidArgument, match="supplemental_groups_policy"):
        spec_from_config(sc_config(supplemental_groups_policy=7))


def test_status_reports_the_process_user() -> None:
    def status_user(gid: int, additional: list[int]) -> list[int]:
        c = Container(id="x", sandbox_id="s", spec=ContainerSpec(name="c", security=SecurityContext()),
                      image_id="i", runtime_handler="runc", dir="/d", log_path="", created_at=0,
                      uid=1000, gid=gid, additional_gids=additional)
        user = to_status(c, c.image_id).user.linux
        assert (user.uid, user.gid) == (1000, gid)
        return list(user.supplemental_groups)

    assert status_user(1000, [1000, 1234, 50000]) == [1000, 1234, 50000]
    assert status_user(1000, [1234]) == [1000, 1234]  # a record from before the gid was stored
