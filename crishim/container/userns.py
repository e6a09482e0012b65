"""Root filesystems for containers in a pod's own user namespace, through idmapped mounts.

runc 1.1.5 cannot idmap mounts itself, so crishim does it before `runc create`: each image layer gets an
idmapped clone (open_tree + mount_setattr(MOUNT_ATTR_IDMAP) with the pod's user namespace + move_mount),
and the overlay is assembled from those clones. Files owned by root in the image then show as the pod's
mapped root (host uid 100000 for 0→100000), which inside the container is root. An idmapped overlay
mount itself is refused (EINVAL), and an idmapped upper dir cannot be written by the mounter (see
idmapped_layers). A CRI mount with uidMappings/gidMappings becomes an idmapped clone of its host path.

Everything runc must reach from inside the user namespace lives in one dir per container under the run
dir (`idmap/<id>`), released as a whole.
"""

from __future__ import annotations

import ctypes
import dataclasses
import errno
import os
import shutil
from pathlib import Path
from typing import Protocol, TypeVar

from crishim.container.model import Mount
from crishim.errors import InvalidArgument
from crishim.sandbox.namespaces import mounts_below, unmount, user_namespace_child
from crishim.sandbox.validate import USERNS_FIELD, check_idmappings

_libc = ctypes.CDLL(None, use_errno=True)
# Generic syscall numbers (x86_64 and arm64 alike), as openat2 in inroot.py.
SYS_OPEN_TREE = 428
SYS_MOVE_MOUNT = 429
SYS_MOUNT_SETATTR = 442
OPEN_TREE_CLONE = 0x1
OPEN_TREE_CLOEXEC = os.O_CLOEXEC
AT_FDCWD = -100
AT_EMPTY_PATH = 0x1000
AT_RECURSIVE = 0x8000
MOVE_MOUNT_F_EMPTY_PATH = 0x4
MOUNT_ATTR_IDMAP = 0x00100000
# The probe's mapping: any will do, the kernel only has to accept an idmapped clone.
PROBE_MAP = "0 100000 65536\n"


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


def _check(result: int, what: str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return result


def _idmapped_clone(source: str, userns_fd: int, recursive: bool = False) -> int:
    """A detached, idmapped clone of the mount at `source` (with its submounts if `recursive`), as
    an fd."""
    recurse = AT_RECURSIVE if recursive else 0
    fd = _check(_libc.syscall(SYS_OPEN_TREE, AT_FDCWD, source.encode(),
                              OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | recurse), f"open_tree {source}")
    try:
        attr = _MountAttr(attr_set=MOUNT_ATTR_IDMAP, userns_fd=userns_fd)
        _check(_libc.syscall(SYS_MOUNT_SETATTR, fd, b"", AT_EMPTY_PATH | recurse, ctypes.byref(attr),
                             ctypes.sizeof(attr)), f"mount_setattr(MOUNT_ATTR_IDMAP) {source}")
    except BaseException:
        os.close(fd)
        raise
    return fd


def idmap_mount(source: str, target: str, userns_fd: int, recursive: bool = False) -> None:
    """Attach an idmapped clone of `source` at `target` (an existing file or directory)."""
    fd = _idmapped_clone(source, userns_fd, recursive)
    try:
        _check(_libc.syscall(SYS_MOVE_MOUNT, fd, b"", AT_FDCWD, target.encode(),
                             MOVE_MOUNT_F_EMPTY_PATH), f"move_mount to {target}")
    finally:
        os.close(fd)


class Layers(Protocol):
    """What an image-manager rootfs offers: an overlay's dirs (crishim.image.rootfs.Rootfs)."""

    lower_dirs: list[Path]
    upper_dir: Path | None
    merged: Path


L = TypeVar("L", bound=Layers)


def idmapped_layers(rootfs: L, userns_path: str, where: Path, root: tuple[int, int]) -> L:
    """Blocking: the same rootfs with every lower dir replaced by an idmapped clone (mapped through the
    user namespace pinned at `userns_path`) in `where`/layers, merged at `where`/merged; `release`
    undoes it.

    The overlay is mounted here rather than in the container's dir so that dir stays private: the
    mapped root is nobody on the host, and `where` is the only way it needs to walk (0711), while
    the layers dir stays closed (0700: the kernel resolved the clones at mount time).

    The upper dir stays as it is but is handed to the mapped root `root` (host uid, gid): overlayfs
    writes it with the mounter's credentials, which an idmapped mount refuses (EOVERFLOW: host root has
    no id in the mapping), and the merged root directory takes its owner from it. What the container
    writes is then stored as the mapped ids, as a chown-remapped snapshot would."""
    if not dataclasses.is_dataclass(rootfs):
        raise TypeError(f"cannot idmap a {type(rootfs).__name__}")
    _walkable_dir(where)
    layers = where / "layers"
    layers.mkdir(mode=0o700, exist_ok=True)
    merged = where / "merged"
    merged.mkdir(mode=0o700, exist_ok=True)
    userns_fd = os.open(userns_path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        lower = []
        for i, source in enumerate(rootfs.lower_dirs):
            target = layers / str(i)
            target.mkdir(mode=0o700, exist_ok=True)
            if not os.path.ismount(target):
                idmap_mount(str(source), str(target), userns_fd)
            lower.append(target)
        if rootfs.upper_dir is not None:
            os.chown(rootfs.upper_dir, *root)
        mapped: L = dataclasses.replace(rootfs, lower_dirs=lower, merged=merged)
        return mapped
    except BaseException:
        release(where)
        raise
    finally:
        os.close(userns_fd)


def _walkable_dir(path: Path) -> None:
    """`path` and its parent made (if missing) so that the mapped root may pass, not list."""
    for directory in (path.parent, path):
        directory.mkdir(mode=0o711, parents=True, exist_ok=True)


def mapped_root_dir(where: Path, root: tuple[int, int]) -> Path:
    """Blocking: an empty root directory at `where`/merged owned by the mapped root `root`, who must
    create mount points in it (the pod's infra process)."""
    _walkable_dir(where)
    merged = where / "merged"
    merged.mkdir(mode=0o700, exist_ok=True)
    os.chown(merged, *root)
    return merged


def release(where: Path) -> None:
    """Blocking: detach the idmapped clones under `where` and remove it; a missing `where` is no
    error. The tree goes only once nothing is mounted in it: a clone still attached would be a live
    view of an image layer or a host directory."""
    if not where.exists():
        return
    for target in mounts_below(str(where)):
        unmount(target)
    left = mounts_below(str(where))
    if left:
        raise OSError(errno.EBUSY, f"still mounted under {where}: {left}")
    shutil.rmtree(where)


def check_mount_mappings(mounts: list[Mount], pod_userns: bool) -> None:
    """A CRI mount's uidMappings/gidMappings ask for an idmapped bind: both are needed, and only a pod
    with its own user namespace has a root they can map to."""
    for mount in mounts:
        if not (mount.uid_mappings or mount.gid_mappings):
            continue
        where = f"mount {mount.container_path!r}"
        if not pod_userns:
            raise InvalidArgument(f"{where}: uidMappings/gidMappings need a pod with its own user "
                                  f"namespace ({USERNS_FIELD} mode POD)")
        if mount.image:
            raise InvalidArgument(f"{where}: an image volume cannot take uidMappings/gidMappings")
        check_idmappings(f"{where} uidMappings", mount.uid_mappings)
        check_idmappings(f"{where} gidMappings", mount.gid_mappings)


def idmap_volume(mount: Mount, where: Path) -> str:
    """Blocking: attach an idmapped clone of the mount's host path (submounts included, as `rbind`)
    at `where`, mapped as the mount asks through a user namespace made for it; returns `where`."""
    _walkable_dir(where.parent)
    if os.path.isdir(mount.host_path):
        where.mkdir(mode=0o700, exist_ok=True)
    else:
        where.touch(mode=0o600, exist_ok=True)
    uid_map = "".join(m.line() for m in mount.uid_mappings)
    gid_map = "".join(m.line() for m in mount.gid_mappings)
    with user_namespace_child([], uid_map, gid_map) as pid:
        userns_fd = os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
        try:
            idmap_mount(mount.host_path, str(where), userns_fd, recursive=True)
        finally:
            os.close(userns_fd)
    return str(where)


def idmap_unsupported(path: str) -> str:
    """Blocking probe, critest's supportsIDMap: why the filesystem at `path` cannot be idmapped with
    a fresh user namespace ("" when it can)."""
    try:
        with user_namespace_child([], PROBE_MAP, PROBE_MAP) as pid:
            userns_fd = os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.close(_idmapped_clone(path, userns_fd))
            finally:
                os.close(userns_fd)
    except OSError as exc:
        return str(exc) or errno.errorcode.get(exc.errno or 0, "error")
    return ""
