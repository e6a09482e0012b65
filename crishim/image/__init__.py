"""Images: pulled from OCI registries or imported, stored by content, unpacked for containers.

Knows nothing of gRPC; `crishim.server.image_*` translate CRI messages to calls on `ImageManager`.
"""

from crishim.image.manager import FsUsage, ImageManager, ImageRecord, Layer
from crishim.image.registry import RegistryAuth
from crishim.image.rootfs import Rootfs

__all__ = ["FsUsage", "ImageManager", "ImageRecord", "Layer", "RegistryAuth", "Rootfs"]
