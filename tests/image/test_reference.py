"""Reference normalisation: every spelling of a name must meet on containerd's full form."""

import pytest

from crishim.errors import InvalidArgument
from crishim.image.reference import as_image_id, parse

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(("ref", "expected"), [
    ("busybox", "docker.io/library/busybox:latest"),
    ("busybox:1.36", "docker.io/library/busybox:1.36"),
    ("library/busybox", "docker.io/library/busybox:latest"),
    ("index.docker.io/library/busybox:1", "docker.io/library/busybox:1"),
    ("someone/app:v1", "docker.io/someone/app:v1"),
    ("registry.k8s.io/pause:3.9", "registry.k8s.io/pause:3.9"),
    ("localhost/app", "localhost/app:latest"),
    ("127.0.0.1:5000/a/b/c:x", "127.0.0.1:5000/a/b/c:x"),
    (f"busybox@{DIGEST}", f"docker.io/library/busybox@{DIGEST}"),
    (f"quay.io/x/y:1@{DIGEST}", f"quay.io/x/y@{DIGEST}"),
])
def test_normalised(ref: str, expected: str) -> None:
    assert str(parse(ref)) == expected


@pytest.mark.parametrize(("ref", "words"), [
    ("", "empty"),
    ("UPPER/Case:bad tag", "whitespace"),
    ("Busybox", "lowercase"),
    ("busybox@sha256:123", "digest"),
    ("busybox:bad/tag!", "registry host"),
    ("busybox:-x", "bad tag"),
    ("a..b/c", "registry host"),
])
def test_bad_references_say_why(ref: str, words: str) -> None:
    with pytest.raises(InvalidArgument, match=words):
        parse(ref)


def test_image_ids() -> None:
    assert as_image_id("ab" * 32) == f"sha256:{'ab' * 32}"
    assert as_image_id(DIGEST) == DIGEST
    assert as_image_id("busybox") is None
