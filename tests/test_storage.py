"""converter.storage without a server: URLs as paths, range coalescing, and what stays local."""

import pathlib

import pytest

from converter import storage
from converter.errors import ConvertError


def test_local_paths_stay_pathlib():
    assert storage.path("models/model.ckpt") == pathlib.Path("models/model.ckpt")
    assert not storage.is_url(pathlib.Path("s3:/bucket/key"))  # a local path that pathlib made of a URL
    assert storage.absolute("x") == str(pathlib.Path("x").resolve())


def test_urls_keep_their_double_slash():
    remote = storage.path("s3://fleet/runs/flowers/model.ckpt-1234")
    assert isinstance(remote, storage.RemotePath)
    assert str(remote) == "s3://fleet/runs/flowers/model.ckpt-1234"
    assert remote.name == "model.ckpt-1234" and remote.suffix == pathlib.Path(remote.name).suffix
    assert str(remote.parent) == "s3://fleet/runs/flowers"
    assert str(remote.with_name("model.pth")) == "s3://fleet/runs/flowers/model.pth"
    assert str(remote.parent / "checkpoint") == "s3://fleet/runs/flowers/checkpoint"
    assert remote.relative_to("s3://fleet/runs").as_posix() == "flowers/model.ckpt-1234"
    assert not remote.is_relative_to("s3://fleet/run") and not remote.is_relative_to("gs://fleet/runs")
    assert str(storage.path("gcs://zoo//a/./b")) == "gs://zoo/a/b"


@pytest.mark.parametrize("url, problem", [("ftp://host/model.ckpt", "not a supported store"),
                                          ("s3://", "no bucket"), ("s3://b/a/../c", "'..'")])
def test_refused_urls(url, problem):
    with pytest.raises(ConvertError, match=problem):
        storage.path(url)


def test_coalesce_merges_near_ranges_only():
    assert storage.coalesce([(0, 10), (15, 20), (100, 200), (150, 160)], gap=5) == [(0, 20), (100, 200)]
    assert storage.coalesce([(0, 10), (16, 20)], gap=5) == [(0, 10), (16, 20)]
    assert storage.coalesce([], gap=5) == []


def test_store_digests_are_the_stores_own():
    assert storage._content_digest("s3", {"ETag": '"abc-2"'}) == "etag:abc-2"
    assert storage._content_digest("gs", {"md5Hash": "q1w2", "crc32c": "x"}) == "md5Hash:q1w2"
    assert storage._content_digest("gs", {}) is None
    assert storage._version({"generation": "17", "ETag": "e", "size": 3}) == "generation:17"
