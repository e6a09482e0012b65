"""The ImageService RPC families, one module each."""

from crishim.server.imagefs_info import ImageFsInfoMixin

ImageMixins = (ImageFsInfoMixin,)
