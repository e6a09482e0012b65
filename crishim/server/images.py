"""The ImageService RPC families, one module each."""

from crishim.server.image_list import ImageListMixin
from crishim.server.image_pull import ImagePullMixin
from crishim.server.image_remove import ImageRemoveMixin
from crishim.server.image_status import ImageStatusMixin
from crishim.server.imagefs_info import ImageFsInfoMixin

ImageMixins = (ImagePullMixin, ImageListMixin, ImageStatusMixin, ImageRemoveMixin, ImageFsInfoMixin)
