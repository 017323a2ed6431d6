"""DeltaStore: bit-exact round trips, checksums, corruption detection, orphans, atomic writes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from sleepwake.errors import CorruptedStateError, InvalidInputError
from sleepwake.storage.deltas import DeltaStore, checksum_tensors


def _tensors() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return {
        "layer.3.u": torch.randn(8, 2, generator=gen),
        "layer.3.v": torch.randn(2, 16, generator=gen).to(torch.bfloat16),
        "layer.3.v_t": torch.randn(16, 2, generator=gen).t(),  # non-contiguous input
        "scalar": torch.tensor(1.5, dtype=torch.float64),
        "ids": torch.arange(5, dtype=torch.int64),
    }


@pytest.fixture()
def store(tmp_path: Path) -> DeltaStore:
    return DeltaStore(tmp_path / "home")


def _assert_one_line_corrupt(exc: pytest.ExceptionInfo, relpath: str) -> None:
    message = str(exc.value)
    assert "\n" not in message and relpath in message and "sleepwake forget" in message


def test_round_trip_is_bit_exact(store: DeltaStore) -> None:
    tensors = _tensors()
    relpath, checksum, nbytes = store.save(7, tensors, {"kind": "memit", "layers": "[3]"})
    assert relpath == "deltas/edit-00000007.safetensors" == DeltaStore.relpath_for(7)
    assert nbytes == (store.home / relpath).stat().st_size
    loaded = store.load(relpath, expected_checksum=checksum)
    assert set(loaded) == set(tensors)
    for name, tensor in tensors.items():
        assert loaded[name].dtype == tensor.dtype and loaded[name].shape == tensor.shape
        assert torch.equal(loaded[name], tensor)
    assert checksum_tensors(loaded) == checksum
    assert store.metadata(relpath) == {"kind": "memit", "layers": "[3]", "sha256": checksum}
    assert store.list_relpaths() == [relpath]


def test_checksum_is_stable_and_sensitive() -> None:
    a, b = _tensors(), _tensors()
    assert checksum_tensors(a) == checksum_tensors(b)
    assert checksum_tensors(a) == checksum_tensors(dict(reversed(list(a.items()))))
    b["layer.3.u"][0, 0] += 1
    assert checksum_tensors(a) != checksum_tensors(b)
    # same bytes, different dtype or shape or name must differ
    x = torch.zeros(4, dtype=torch.float32)
    assert checksum_tensors({"x": x}) != checksum_tensors({"x": x.view(torch.int32)})
    assert checksum_tensors({"x": x}) != checksum_tensors({"x": x.reshape(2, 2)})
    assert checksum_tensors({"x": x}) != checksum_tensors({"y": x})


def test_truncated_file_is_corrupted(store: DeltaStore) -> None:
    relpath, checksum, _ = store.save(1, _tensors(), {})
    path = store.home / relpath
    data = path.read_bytes()
    for cut in (len(data) - 3, 40, 4, 0):
        path.write_bytes(data[:cut])
        with pytest.raises(CorruptedStateError) as info:
            store.load(relpath, checksum)
        _assert_one_line_corrupt(info, relpath)
    with pytest.raises(CorruptedStateError):
        store.metadata(relpath)


def test_flipped_byte_is_corrupted(store: DeltaStore) -> None:
    relpath, checksum, _ = store.save(1, _tensors(), {})
    path = store.home / relpath
    data = bytearray(path.read_bytes())
    data[-10] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptedStateError, match="embedded checksum") as info:
        store.load(relpath)
    _assert_one_line_corrupt(info, relpath)


def test_ledger_checksum_mismatch_and_missing_file(store: DeltaStore) -> None:
    relpath, _, _ = store.save(1, _tensors(), {})
    with pytest.raises(CorruptedStateError, match="ledger"):
        store.load(relpath, expected_checksum="0" * 64)
    store.delete(relpath)
    store.delete(relpath)  # already gone is fine
    with pytest.raises(CorruptedStateError, match="missing") as info:
        store.load(relpath)
    _assert_one_line_corrupt(info, relpath)


@pytest.mark.parametrize("relpath", ["../secret.safetensors", "/etc/passwd", "deltas/../../x.safetensors",
                                     "other/edit.safetensors", "deltas/sub/x.safetensors", "deltas/a\nb", ""])
def test_path_escape_is_rejected(store: DeltaStore, relpath: str) -> None:
    with pytest.raises(InvalidInputError) as info:
        store.load(relpath)
    assert "\n" not in str(info.value)


def test_symlink_escape_is_rejected(store: DeltaStore, tmp_path: Path) -> None:
    outside = tmp_path / "outside.safetensors"
    relpath, _, _ = store.save(1, _tensors(), {})
    outside.write_bytes((store.home / relpath).read_bytes())
    (store.dir / "edit-00000002.safetensors").symlink_to(outside)
    with pytest.raises(InvalidInputError):
        store.load("deltas/edit-00000002.safetensors")


def test_orphans_and_temp_files(store: DeltaStore) -> None:
    assert store.orphans(set()) == [] and store.list_relpaths() == []
    kept, _, _ = store.save(1, _tensors(), {})
    stray, _, _ = store.save(2, _tensors(), {})
    temp = store.dir / ".tmp-edit-00000003-abc.safetensors"
    temp.write_bytes(b"partial")
    assert store.list_relpaths() == [kept, stray]
    orphans = store.orphans({kept})
    assert orphans == sorted([stray, f"deltas/{temp.name}"])
    assert store.remove_orphans({kept}) == orphans
    assert sorted(os.listdir(store.dir)) == [Path(kept).name]


def test_atomic_write_leaves_no_temp_files(store: DeltaStore, monkeypatch: pytest.MonkeyPatch) -> None:
    relpath, first, _ = store.save(1, _tensors(), {})
    new = {"w": torch.ones(3)}
    store.save(1, new, {"v": "2"})  # overwrite atomically
    assert os.listdir(store.dir) == [Path(relpath).name]
    assert torch.equal(store.load(relpath)["w"], new["w"])

    def crash(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        store.save(1, _tensors(), {})
    monkeypatch.undo()
    assert os.listdir(store.dir) == [Path(relpath).name]
    assert store.metadata(relpath)["v"] == "2"  # old file untouched


def test_reserved_metadata_key(store: DeltaStore) -> None:
    with pytest.raises(ValueError):
        store.save(1, _tensors(), {"sha256": "x"})
