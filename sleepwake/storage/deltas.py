"""Delta store: each edit's low-rank factors as one checksummed safetensors file.

Files live in ``<home>/deltas`` and are named by edit id. Writes are atomic (temp file in the
same folder, fsync, rename, fsync the folder), so a crash leaves either the old state or the
new file, plus at worst a temp file that ``orphans`` reports. Reads never unpickle anything:
safetensors only, and the content is re-hashed and compared with the checksum stored in the
file and, when given, the one recorded in the ledger.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path, PurePosixPath

import safetensors.torch
import torch

from sleepwake.errors import CorruptedStateError, InvalidInputError

__all__ = ["DeltaStore", "checksum_tensors", "DELTAS_DIR"]

DELTAS_DIR = "deltas"
_TEMP_PREFIX = ".tmp-"
_MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit; a larger length field means a corrupt file


def checksum_tensors(tensors: Mapping[str, torch.Tensor]) -> str:
    """sha256 hex over names, dtypes, shapes and raw bytes, in name order.

    Independent of file layout and safetensors version, so the same tensors always hash the
    same; each field is length-prefixed so different tensor sets cannot collide by concatenation.
    """
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().to("cpu").contiguous()
        header = json.dumps([name, str(tensor.dtype), list(tensor.shape)]).encode("utf-8")
        digest.update(len(header).to_bytes(8, "little") + header)
        # reshape(-1) makes 0-dim tensors viewable as bytes; the view avoids a copy.
        raw = tensor.reshape(-1).view(torch.uint8).numpy()
        digest.update(raw.nbytes.to_bytes(8, "little"))
        digest.update(raw.tobytes())
    return digest.hexdigest()


def _one_line(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def fsync_dir(directory: Path) -> None:
    """Persist a rename: the directory entry itself must reach the disk."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # platforms that cannot open directories (Windows) have no dir fsync
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class DeltaStore:
    """Reads and writes ``<home>/deltas/edit-XXXXXXXX.safetensors`` files."""

    def __init__(self, home: Path) -> None:
        self.home = Path(home)
        self.dir = self.home / DELTAS_DIR

    @staticmethod
    def relpath_for(edit_id: int, kind: str = "edit") -> str:
        """``kind`` "edit" (MEMIT) or "adapter" (sleep's LoRA): both live in deltas/, so snapshots,
        restores and orphan clean-up treat them alike."""
        return f"{DELTAS_DIR}/{kind}-{int(edit_id):08d}.safetensors"

    def save(
        self, edit_id: int, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str], kind: str = "edit"
    ) -> tuple[str, str, int]:
        """Write the factors atomically; return (relpath, checksum, nbytes)."""
        if "sha256" in metadata:
            raise ValueError("metadata key 'sha256' is reserved for the checksum")
        bad = [key for key, value in metadata.items() if not isinstance(value, str)]
        if bad:
            raise TypeError(f"metadata values must be str: {bad}")
        cpu = {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}
        checksum = checksum_tensors(cpu)
        relpath = self.relpath_for(edit_id, kind)
        final = self.home / relpath
        self.dir.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(
            dir=self.dir, prefix=f"{_TEMP_PREFIX}{final.stem}-", suffix=".safetensors"
        )
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            safetensors.torch.save_file(cpu, str(tmp), metadata={**metadata, "sha256": checksum})
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        fsync_dir(self.dir)
        return relpath, checksum, final.stat().st_size

    def load(self, relpath: str, expected_checksum: str | None = None) -> dict[str, torch.Tensor]:
        """Read and verify a delta file; any problem is a one-line CorruptedStateError."""
        path = self._resolve(relpath)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise self._corrupted(relpath, "file is missing") from None
        except OSError as exc:
            raise self._corrupted(relpath, exc.strerror or str(exc)) from None
        try:
            # Any parse failure (truncation, bad header, bad dtype) means the file is unusable.
            tensors = safetensors.torch.load(data)
            stored = _header_metadata(data).get("sha256")
        except Exception as exc:
            raise self._corrupted(relpath, f"unreadable safetensors: {exc}") from None
        if not stored:
            raise self._corrupted(relpath, "no checksum in its metadata")
        actual = checksum_tensors(tensors)
        if actual != stored:
            raise self._corrupted(relpath, "content does not match its embedded checksum")
        if expected_checksum is not None and actual != expected_checksum:
            raise self._corrupted(relpath, "content does not match the checksum in the ledger")
        return tensors

    def metadata(self, relpath: str) -> dict[str, str]:
        """The file's string metadata (including 'sha256'), without loading the tensors."""
        path = self._resolve(relpath)
        try:
            with open(path, "rb") as handle:
                length = int.from_bytes(handle.read(8), "little")
                if length > _MAX_HEADER_BYTES:
                    raise ValueError(f"header length {length} is implausible")
                return _header_metadata(length.to_bytes(8, "little") + handle.read(length))
        except FileNotFoundError:
            raise self._corrupted(relpath, "file is missing") from None
        except Exception as exc:
            raise self._corrupted(relpath, f"unreadable header: {exc}") from None

    def delete(self, relpath: str) -> None:
        """Remove a delta file; one that is already gone is fine."""
        self._resolve(relpath).unlink(missing_ok=True)

    def list_relpaths(self) -> list[str]:
        """Finished delta files (temp files excluded), sorted."""
        return sorted(
            f"{DELTAS_DIR}/{p.name}" for p in self._entries()
            if not p.name.startswith(_TEMP_PREFIX) and p.suffix == ".safetensors"
        )

    def orphans(self, known: set[str]) -> list[str]:
        """Files in deltas/ that the ledger does not reference, leftover temp files included."""
        known_names = {PurePosixPath(k).as_posix() for k in known}
        present = (f"{DELTAS_DIR}/{p.name}" for p in self._entries())
        return sorted(relpath for relpath in present if relpath not in known_names)

    def remove_orphans(self, known: set[str]) -> list[str]:
        """Delete the orphans and return their relpaths."""
        removed = self.orphans(known)
        for relpath in removed:
            (self.dir / PurePosixPath(relpath).name).unlink(missing_ok=True)
        if removed:
            fsync_dir(self.dir)
        return removed

    # -- helpers -------------------------------------------------------------------------------

    def _entries(self) -> list[Path]:
        if not self.dir.is_dir():
            return []
        # Symlinks count as entries (they may dangle); subfolders are not ours to judge.
        return [p for p in self.dir.iterdir() if p.is_symlink() or p.is_file()]

    def _resolve(self, relpath: str) -> Path:
        """Map a ledger relpath to a file strictly inside deltas/, following symlinks."""
        if not isinstance(relpath, str) or not relpath or any(ord(ch) < 32 for ch in relpath):
            raise InvalidInputError(f"delta path {relpath!r} is not a valid relative path")
        pure = PurePosixPath(relpath.replace("\\", "/"))
        if pure.is_absolute() or ".." in pure.parts or pure.parts[:-1] != (DELTAS_DIR,):
            raise InvalidInputError(f"delta path {relpath!r} is outside the home's {DELTAS_DIR} folder")
        resolved = (self.home / pure).resolve()
        if resolved.parent != self.dir.resolve():
            raise InvalidInputError(f"delta path {relpath!r} leads outside the home's {DELTAS_DIR} folder")
        return resolved

    @staticmethod
    def _corrupted(relpath: str, reason: str) -> CorruptedStateError:
        return CorruptedStateError(
            f"delta file {relpath} is corrupted or unreadable ({_one_line(reason)}); "
            "run 'sleepwake forget' on its facts or restore the home from a backup"
        )


def _header_metadata(data: bytes) -> dict[str, str]:
    """Parse the ``__metadata__`` block of a safetensors header (8-byte length + JSON)."""
    length = int.from_bytes(data[:8], "little")
    if len(data) < 8 + length:
        raise ValueError("header is truncated")
    header = json.loads(data[8:8 + length])
    metadata = header.get("__metadata__") or {}
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise ValueError("metadata is not all strings")
    return dict(metadata)
