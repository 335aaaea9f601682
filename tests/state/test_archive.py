"""The trajectory archive against a local folder and a real S3-compatible server on loopback
(moto's standalone server): chunks, manifest, idempotent rewrites, DATA_LOSS, delete."""

from __future__ import annotations

import hashlib

import pytest

from worldserve.state.archive import Archive, ArchivedStep, DataLoss, decode_chunk, encode_chunk


@pytest.fixture(scope="module")
def s3_url():
    boto3 = pytest.importorskip("boto3")
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    boto3.client(
        "s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="test", aws_secret_access_key="test"
    ).create_bucket(Bucket="worlds")
    yield endpoint
    server.stop()


@pytest.fixture(params=["file", "s3"])
def archive(request, tmp_path):
    if request.param == "file":
        return Archive.from_url(f"file://{tmp_path}/archive")
    endpoint = request.getfixturevalue("s3_url")
    return Archive.from_url(
        f"s3://worlds/prefix-{tmp_path.name}",
        {
            "endpoint": endpoint,
            "region": "us-east-1",
            "access_key_id": "test",
            "secret_access_key": "test",
            "allow_http": True,
        },
    )


def steps(a: int, b: int, latents: bool = True) -> list[ArchivedStep]:
    return [
        ArchivedStep(
            n,
            None if n == 0 else {"keys": ["right"], "mouse": {}},
            f"png{n}".encode() * 3,
            f"z{n}".encode() if latents else None,
        )
        for n in range(a, b + 1)
    ]


def test_chunk_roundtrip_and_garbage():
    e = steps(4, 9) + steps(10, 10, latents=False)
    assert decode_chunk(encode_chunk(e)) == e
    with pytest.raises(ValueError, match="consecutive"):
        encode_chunk(steps(0, 1) + steps(3, 3))
    with pytest.raises(DataLoss, match="does not parse"):
        decode_chunk(b"not a chunk")


async def test_chunks_manifest_and_reads_across_chunks(archive):
    await archive.write_chunk("t", "s_1", steps(0, 3))
    await archive.write_chunk("t", "s_1", steps(4, 7))
    ref = await archive.write_chunk("t", "s_1", steps(4, 7))  # a rewrite after a crash: same object, listed once
    assert [(c.first, c.last) for c in await archive.manifest("t", "s_1")] == [(0, 3), (4, 7)]
    assert ref.sha256 == hashlib.sha256(encode_chunk(steps(4, 7))).hexdigest()
    assert await archive.read("t", "s_1", 2, 6) == steps(2, 6)
    assert await archive.manifest("t", "s_other") == []
    with pytest.raises(DataLoss, match="steps 8-9 are missing"):
        await archive.read("t", "s_1", 6, 9)
    with pytest.raises(DataLoss, match="does not follow"):
        await archive.write_chunk("t", "s_1", steps(9, 10))


async def test_a_corrupt_or_missing_chunk_is_data_loss_naming_its_steps(archive):
    import obstore

    await archive.write_chunk("t", "s_2", steps(0, 3))
    await archive.write_chunk("t", "s_2", steps(4, 7))
    base = archive._base("t", "s_2")
    await obstore.put_async(archive.store, base + "chunks/000000000004-000000000007.wsc", b"garbage")
    with pytest.raises(DataLoss, match="steps 4-7 are corrupt"):
        await archive.read("t", "s_2", 0, 7)
    assert await archive.read("t", "s_2", 0, 3) == steps(0, 3)  # the rest still reads
    await obstore.delete_async(archive.store, [base + "chunks/000000000000-000000000003.wsc"])
    with pytest.raises(DataLoss, match="steps 0-3 are missing"):
        await archive.read("t", "s_2", 1, 2)


async def test_delete_removes_every_object_of_the_session_only(archive):
    await archive.write_chunk("t", "s_3", steps(0, 3))
    await archive.write_chunk("t", "s_4", steps(0, 1))
    assert await archive.delete_session("t", "s_3") == 2  # the chunk and the manifest
    assert await archive.manifest("t", "s_3") == []
    assert await archive.read("t", "s_4", 0, 1) == steps(0, 1)


async def test_s3_settings_come_from_the_usual_aws_variables(s3_url, monkeypatch):
    for k, v in {
        "AWS_ENDPOINT": s3_url,
        "AWS_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_ALLOW_HTTP": "true",
    }.items():
        monkeypatch.setenv(k, v)
    a = Archive.from_url("s3://worlds/from-env")
    await a.write_chunk("t", "s_env", steps(0, 2))
    assert await a.read("t", "s_env", 0, 2) == steps(0, 2)


async def test_a_stale_manifest_write_never_drops_a_listed_chunk(archive):
    """Two writers of one session's archive (an archiver whose lease ran out while the store was
    away, and the one that took the session over): the late one read the manifest before the other
    listed two more chunks. On S3 its write is refused (If-Match) and it reads again: the chunk it
    brings is listed already, nothing is dropped, nothing listed twice."""
    if not archive.conditional:
        pytest.skip("a local folder has one writer per session at a time: the archiver's lease")
    late, other = archive, Archive(archive.store, archive.prefix)
    await other.write_chunk("t", "s_5", steps(0, 3))
    stale = [await late._manifest("t", "s_5")]
    await other.write_chunk("t", "s_5", steps(4, 7))
    await other.write_chunk("t", "s_5", steps(8, 11))
    fresh = late._manifest

    async def read_stale_first(tenant, sid):
        return stale.pop() if stale else await fresh(tenant, sid)

    late._manifest = read_stale_first
    await late.write_chunk("t", "s_5", steps(4, 7))
    assert [(c.first, c.last) for c in await other.manifest("t", "s_5")] == [(0, 3), (4, 7), (8, 11)]


async def test_concurrent_writers_of_one_chunk_list_it_once(s3_url):
    opts = {"endpoint": s3_url, "region": "us-east-1", "access_key_id": "test", "secret_access_key": "test"}
    a, b = (Archive.from_url("s3://worlds/race", {**opts, "allow_http": True}) for _ in range(2))
    import asyncio

    for first in range(0, 40, 4):
        await asyncio.gather(
            a.write_chunk("t", "s_6", steps(first, first + 3)), b.write_chunk("t", "s_6", steps(first, first + 3))
        )
    assert [(c.first, c.last) for c in await a.manifest("t", "s_6")] == [(n, n + 3) for n in range(0, 40, 4)]
