"""Latent shard format: round trip, checksums, clear errors."""

import json

import pytest
import torch

from seqmix.data.shards import LatentShards, ShardWriter


def _write(tmp_path, n=5, shard_size=2):
    g = torch.Generator().manual_seed(0)
    ex = [(torch.randn(5, 4, 6, 6, generator=g), torch.randn(8, 16, generator=g)) for _ in range(n)]
    with ShardWriter(tmp_path, shard_size=shard_size, dtype=torch.float32, layout={"num_segments": 1}) as w:
        for lat, txt in ex:
            w.add(lat, txt)
    return ex


def test_round_trip_over_several_shards(tmp_path):
    ex = _write(tmp_path)
    ds = LatentShards(tmp_path)
    assert len(ds) == 5 and len(ds.index["shards"]) == 3
    assert ds.latent_shape == (5, 4, 6, 6) and ds.text_shape == (8, 16)
    for i, (lat, txt) in enumerate(ex):
        item = ds[i]
        assert torch.equal(item["latents"], lat) and torch.equal(item["text"], txt)
        assert item["text_mask"].all()
    with pytest.raises(IndexError):
        ds[5]


def test_checksum_mismatch_and_missing_files_fail_clearly(tmp_path):
    _write(tmp_path)
    shard = tmp_path / "shard-00001.safetensors"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF
    shard.write_bytes(bytes(data))
    ds = LatentShards(tmp_path)
    ds[0]  # shard 0 is fine
    with pytest.raises(ValueError, match="checksum mismatch"):
        ds[2]
    shard.unlink()
    with pytest.raises(FileNotFoundError, match="missing"):
        LatentShards(tmp_path)
    with pytest.raises(FileNotFoundError, match="index.json"):
        LatentShards(tmp_path / "nope")


def test_writer_rejects_mixed_shapes_and_existing_dataset(tmp_path):
    w = ShardWriter(tmp_path / "a", shard_size=4)
    w.add(torch.randn(5, 4, 6, 6), torch.randn(8, 16))
    with pytest.raises(ValueError, match="differ"):
        w.add(torch.randn(9, 4, 6, 6), torch.randn(8, 16))
    w.close()
    assert json.loads((tmp_path / "a" / "index.json").read_text())["dtype"] == "bfloat16"
    with pytest.raises(FileExistsError):
        ShardWriter(tmp_path / "a")
