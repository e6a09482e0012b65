"""The user a container runs as, through a real `crishim serve`: images whose /etc is hostile or
linked, and supplemental_groups_policy as critest checks it (security_context_linux.go).

The images are built here with umoci from busybox-static and loaded with `crishim images import`
before the server starts.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from crishim.api.runtime.v1 import api_pb2
from tests.harness import REPO, CrishimServer, poll, run
from tests.image_fixtures import BUSYBOX, PATH_ENV, layout_image
from tests.sandbox.podutil import pod_config, run_pod

pytestmark = pytest.mark.root

APPLETS = ("sh", "id", "sleep", "cat")
# critest's testImagePreDefinedGroup: default-user (1000) belongs to group-defined-in-image (50000).
PREDEFINED_UID, PREDEFINED_GID, SUPPLEMENTAL = 1000, 50000, 1234


@dataclass
class UserImages:
    layout: Path  # the OCI layout holding them all
    host_etc: Path  # a host directory with a passwd naming `app` as 4343
    absolute: str  # /etc -> host_etc, User app
    relative: str  # /etc/passwd -> ../usr/share/passwd (app is 4243, in staff 4242), User app
    predefined: str  # critest's image: User 1000


def _populate_base(rootfs: Path) -> None:
    for name in ("bin", "proc", "sys", "dev", "tmp", "usr/share"):
        (rootfs / name).mkdir(parents=True, exist_ok=True)
    shutil.copy2(BUSYBOX, rootfs / "bin/busybox")
    for applet in APPLETS:
        (rootfs / "bin" / applet).hardlink_to(rootfs / "bin/busybox")


def _absolute(host_etc: Path) -> Callable[[Path], None]:
    def populate(rootfs: Path) -> None:
        (rootfs / "etc").symlink_to(host_etc)

    return populate


def _relative(rootfs: Path) -> None:
    (rootfs / "usr/share/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n"
                                             "app:x:4243:4243:app:/:/bin/sh\n")
    (rootfs / "usr/share/group").write_text("root:x:0:\napp:x:4243:\nstaff:x:4242:app\n")
    (rootfs / "etc").mkdir()
    (rootfs / "etc/passwd").symlink_to("../usr/share/passwd")
    (rootfs / "etc/group").symlink_to("../../../usr/share/group")


def _predefined(rootfs: Path) -> None:
    (rootfs / "etc").mkdir()
    (rootfs / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n"
                                       f"default-user:x:{PREDEFINED_UID}:{PREDEFINED_UID}::/:/bin/sh\n")
    (rootfs / "etc/group").write_text(f"root:x:0:\ndefault-user:x:{PREDEFINED_UID}:\n"
                                      f"group-defined-in-image:x:{PREDEFINED_GID}:default-user\n")


@pytest.fixture(scope="module")
def user_images(tmp_path_factory: pytest.TempPathFactory) -> UserImages:
    work = tmp_path_factory.mktemp("user-images")
    host_etc = work / "host-etc"
    host_etc.mkdir()
    (host_etc / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\napp:x:4343:4343::/:/bin/sh\n")
    (host_etc / "group").write_text("root:x:0:\napp:x:4343:\nspy:x:4344:app\n")
    layout = work / "layout"
    run(["umoci", "init", "--layout", str(layout)])
    variants: dict[str, tuple[Callable[[Path], None], str]] = {
        "absolute": (_absolute(host_etc), "app"), "relative": (_relative, "app"),
        "predefined": (_predefined, str(PREDEFINED_UID))}
    for tag, (populate, user) in variants.items():
        bundle = work / f"bundle-{tag}"
        run(["umoci", "new", "--image", f"{layout}:base-{tag}"])
        run(["umoci", "unpack", "--image", f"{layout}:base-{tag}", str(bundle)])
        _populate_base(bundle / "rootfs")
        populate(bundle / "rootfs")
        run(["umoci", "repack", "--image", f"{layout}:base-{tag}", str(bundle)])
        run(["umoci", "config", "--image", f"{layout}:base-{tag}", "--tag", tag, "--config.user", user,
             "--config.cmd", "sh", "--config.env", PATH_ENV, "--os", "linux",
             "--architecture", "amd64"])
        run(["umoci", "rm", "--image", f"{layout}:base-{tag}"])
    run(["umoci", "gc", "--layout", str(layout)])
    ids = {tag: json.loads(layout_image(layout, tag)[0])["config"]["digest"] for tag in variants}
    return UserImages(layout=layout, host_etc=host_etc, absolute=ids["absolute"], relative=ids["relative"],
                      predefined=ids["predefined"])


@pytest.fixture
def served(server_factory: Callable[..., CrishimServer], user_images: UserImages,
           tmp_path: Path) -> tuple[CrishimServer, Path]:
    """A server whose store holds the images, and a pod layout dir for container logs."""
    server = server_factory(start=False)
    server.write_config()
    run([sys.executable, "-m", "crishim", "--config", str(server.config_path), "images", "import",
         str(user_images.layout)], cwd=REPO)
    server.start()
    return server, tmp_path / "pod-logs"


def create(server: CrishimServer, pod_id: str, pod: api_pb2.PodSandboxConfig, name: str, image: str,
           script: str, **security: object) -> str:
    config = api_pb2.ContainerConfig(
        metadata=api_pb2.ContainerMetadata(name=name), image=api_pb2.ImageSpec(image=image),
        command=["sh", "-c", script], log_path=f"{name}.log",
        linux=api_pb2.LinuxContainerConfig(
            security_context=api_pb2.LinuxContainerSecurityContext(**security)))
    rt = server.runtime()
    cid = rt.CreateContainer(api_pb2.CreateContainerRequest(
        pod_sandbox_id=pod_id, config=config, sandbox_config=pod)).container_id
    rt.StartContainer(api_pb2.StartContainerRequest(container_id=cid))
    return str(cid)


def first_output(log: Path) -> str:
    """The container's first stdout line once it is logged (CRI log: time stream tag text)."""
    def line() -> str:
        lines = log.read_text().splitlines() if log.exists() else []
        return lines[0].split(" ", 3)[3] if lines else ""

    return str(poll(line, timeout=20, what=f"output in {log}"))


def exec_out(server: CrishimServer, cid: str, *cmd: str) -> str:
    response = server.runtime().ExecSync(api_pb2.ExecSyncRequest(container_id=cid, cmd=list(cmd),
                                                                 timeout=10))
    assert response.exit_code == 0, response.stderr
    return response.stdout.decode()


def status_user(server: CrishimServer, cid: str) -> tuple[int, int, list[int]]:
    user = server.runtime().ContainerStatus(
        api_pb2.ContainerStatusRequest(container_id=cid)).status.user.linux
    return user.uid, user.gid, sorted(user.supplemental_groups)


def test_image_etc_files_resolve_inside_the_rootfs(served: tuple[CrishimServer, Path],
                                                   user_images: UserImages) -> None:
    server, logs = served
    pod = pod_config("users", log_directory=str(logs))
    pod_id = run_pod(server, pod)

    # /etc -> <host dir>: the host's passwd (app = 4343) is never read; inside the image there is no
    # such user, so the request is refused naming the user.
    with pytest.raises(grpc.RpcError) as refused:
        create(server, pod_id, pod, "absolute", user_images.absolute, "id; sleep 600")
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "'app'" in str(refused.value.details())
    # A numeric user gets nothing of the host's files either: gid 0, no groups from them.
    numeric = create(server, pod_id, pod, "absolute-numeric", user_images.absolute, "id -G; sleep 600",
                     run_as_user=api_pb2.Int64Value(value=4343))
    assert status_user(server, numeric) == (4343, 0, [0])
    assert first_output(logs / "absolute-numeric.log") == "0"

    # A relative in-image symlink works, as in containerd: uid 4243 and the image's groups.
    relative = create(server, pod_id, pod, "relative", user_images.relative, "id; sleep 600")
    assert first_output(logs / "relative.log") == "uid=4243(app) gid=4243(app) groups=4242(staff),4243(app)"
    assert status_user(server, relative) == (4243, 4243, [4242, 4243])
    assert exec_out(server, relative, "id", "-G") == "4243 4242\n"


@pytest.mark.parametrize(("policy", "expected", "groups"), [
    (api_pb2.Merge, [PREDEFINED_UID, SUPPLEMENTAL, PREDEFINED_GID],
     "1000(default-user),1234,50000(group-defined-in-image)"),
    (api_pb2.Strict, [PREDEFINED_UID, SUPPLEMENTAL], "1000(default-user),1234"),
])
def test_supplemental_groups_policy(served: tuple[CrishimServer, Path], user_images: UserImages,
                                    policy: int, expected: list[int], groups: str) -> None:
    """critest's SupplementalGroupsPolicy specs: status user, first process and exec agree (`id -G`
    names the primary group first whatever the process has; `id` shows the real list)."""
    server, logs = served
    pod = pod_config("groups", log_directory=str(logs))
    pod_id = run_pod(server, pod)
    cid = create(server, pod_id, pod, "groups", user_images.predefined, "id -G; sleep 600",
                 run_as_user=api_pb2.Int64Value(value=PREDEFINED_UID),
                 supplemental_groups=[SUPPLEMENTAL], supplemental_groups_policy=policy)
    assert status_user(server, cid) == (PREDEFINED_UID, PREDEFINED_UID, sorted(expected))
    line = " ".join(map(str, expected))
    assert first_output(logs / "groups.log") == line
    assert exec_out(server, cid, "id", "-G") == f"{line}\n"
    assert exec_out(server, cid, "id").endswith(f" groups={groups}\n")
