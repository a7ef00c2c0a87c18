"""Features on disk: one float32 ``.npy`` matrix [N, d], written chunk by chunk, read memory-mapped.

A store is the file ``<name>.npy`` beside ``<name>.npy.json`` (its shape and the SHA-256 of its matrix)
once complete. While it is being written it is ``<name>.npy.partial`` (the matrix, created sparse at its
full size), ``<name>.npy.id`` (a random id created with that matrix) and ``<name>.npy.done/``, which holds
one marker per finished chunk, named by its rows (``<start>-<stop>``), naming the store id and the
SHA-256 of the chunk's rows, and created only after those rows are flushed to disk. So:

* an interrupted extraction resumes at the chunks without a marker (a kill mid-chunk loses only that
  chunk), and a resume or a rank with another chunk size trusts only the markers of its own row ranges;
* a marker counts only for the matrix it was written into: deleting the ``.partial`` (or the finished
  matrix) starts a matrix with a new id, and the old markers are ignored;
* finishing reads the matrix once and checks every chunk against its marker's digest: a chunk changed
  since it was marked (a hand edit, a copy from elsewhere) is computed again, never trusted;
* several processes (the ranks of a distributed job, on one file system) write disjoint chunks of one
  store at once: chunk ``i`` belongs to rank ``i % world_size``; the process that finds every marker
  present (under a file lock) checks the chunks and renames the matrix into place;
* a complete store is read with ``np.load(mmap_mode="r")``: pages come from the file as they are
  touched and count as file-backed, not anonymous, memory, whatever N is. Its :attr:`FeatureStore.digest`
  (:func:`matrix_digest` of the matrix) names the exact features a proxy was built from.

Numpy and filelock only: no torch (the encoder that fills a store lives in ``features``).
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from filelock import FileLock

from ..files import atomic_write_bytes

#: Rows per chunk: a multiple of every extraction batch size in use, so chunked extraction runs exactly the
#: batches a single pass would (the same floats); about 32 MB of float32 features at d = 256.
DEFAULT_CHUNK_ROWS = 32768


class FeatureStore:
    """The on-disk features of one (encoder, data) pair at ``path`` (``<cache>/features-<hash>.npy``).

    num_rows, dim: the matrix shape [N, d]. chunk_rows: rows per chunk (the last may be shorter).
    """

    def __init__(self, path: str | os.PathLike, num_rows: int, dim: int, chunk_rows: int = DEFAULT_CHUNK_ROWS):
        if num_rows < 1 or dim < 1 or chunk_rows < 1:
            raise ValueError(f"a feature store needs num_rows, dim and chunk_rows >= 1, got {num_rows}, {dim}, "
                             f"{chunk_rows}")
        self.path = Path(path)
        self.num_rows, self.dim, self.chunk_rows = int(num_rows), int(dim), int(chunk_rows)
        self.partial = self._beside(".partial")
        self.id_file = self._beside(".id")
        self.done_dir = self._beside(".done")
        self.record = self._beside(".json")
        self.lock = FileLock(str(self._beside(".lock")))

    def _beside(self, suffix: str) -> Path:
        return self.path.with_name(self.path.name + suffix)

    @property
    def num_chunks(self) -> int:
        return -(-self.num_rows // self.chunk_rows)

    def rows(self, chunk: int) -> range:
        """The row range of chunk ``chunk``."""
        return range(chunk * self.chunk_rows, min(self.num_rows, (chunk + 1) * self.chunk_rows))

    def complete(self) -> bool:
        """Whether the finished matrix and its record (of this shape) are in place."""
        return self.path.exists() and self._finished_record() is not None

    @property
    def digest(self) -> str:
        """The :func:`matrix_digest` of the complete matrix, as recorded when it was finished."""
        record = self._finished_record()
        if record is None or not self.path.exists():
            raise ValueError(f"feature store {self.path} is not complete")
        return record["sha256"]

    def _finished_record(self) -> dict | None:
        try:
            record = json.loads(self.record.read_text())
        except (OSError, ValueError):
            return None
        ok = isinstance(record, dict) and record.get("shape") == [self.num_rows, self.dim] and \
            isinstance(record.get("sha256"), str)
        return record if ok else None

    def missing_chunks(self, rank: int = 0, world_size: int = 1) -> list[int]:
        """The unfinished chunks of rank ``rank`` of ``world_size`` (chunk i belongs to rank i % world_size)."""
        if self.complete():
            return []
        store_id = self._store_id()
        return [i for i in range(rank, self.num_chunks, world_size) if self._marked_digest(i, store_id) is None]

    def _marker(self, chunk: int) -> Path:
        """The marker of chunk ``chunk``, named by its row range."""
        rows = self.rows(chunk)
        return self.done_dir / f"{rows.start}-{rows.stop}"

    def _marked_digest(self, chunk: int, store_id: str | None) -> str | None:
        """The digest chunk ``chunk``'s marker records for the matrix ``store_id``; None when unmarked (a
        marker of another matrix, or unreadable, counts as none)."""
        if store_id is None:
            return None
        try:
            marker = json.loads(self._marker(chunk).read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(marker, dict) or marker.get("store") != store_id or not isinstance(marker.get("sha256"), str):
            return None
        return marker["sha256"]

    def _store_id(self) -> str | None:
        """The id of the ``.partial`` matrix now on disk; None when there is none."""
        try:
            return self.id_file.read_text().strip() or None
        except OSError:
            return None

    def _start(self) -> None:
        """Create the sparse matrix file, its id and the marker folder unless they exist (under the lock)."""
        with self.lock:
            if self.complete():
                return
            if self.partial.exists() and (self._partial_shape() != (self.num_rows, self.dim) or self._store_id() is None):
                self._discard()  # a stale store of another shape, or a matrix whose id was lost
            if not self.partial.exists():
                # a new matrix gets a new id first: markers of any earlier matrix no longer count
                atomic_write_bytes(self.id_file, secrets.token_hex(16).encode())
                tmp = self.partial.with_name(self.partial.name + ".tmp")
                np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(self.num_rows, self.dim)).flush()
                os.replace(tmp, self.partial)
            self.done_dir.mkdir(exist_ok=True)

    def _partial_shape(self) -> tuple[int, ...] | None:
        try:
            return np.load(self.partial, mmap_mode="r", allow_pickle=False).shape
        except (OSError, ValueError):
            return None

    def _discard(self) -> None:
        self.partial.unlink(missing_ok=True)
        self.id_file.unlink(missing_ok=True)
        shutil.rmtree(self.done_dir, ignore_errors=True)

    def write_chunk(self, chunk: int, features: np.ndarray) -> None:
        """Write the rows of chunk ``chunk`` (float32 [len(rows), d]) durably, then mark it done."""
        rows = self.rows(chunk)
        if features.shape != (len(rows), self.dim):
            raise ValueError(f"chunk {chunk} must be [{len(rows)}, {self.dim}], got {list(features.shape)}")
        store_id = self._store_id()  # read before the matrix: a marker never names a newer matrix than it wrote
        features = np.ascontiguousarray(features, dtype=np.float32)
        matrix = np.load(self.partial, mmap_mode="r+", allow_pickle=False)
        matrix[rows.start:rows.stop] = features
        matrix.flush()
        del matrix
        with open(self.partial, "rb+") as handle:
            os.fsync(handle.fileno())
        marker = {"store": store_id, "sha256": hashlib.sha256(features.tobytes()).hexdigest()}
        atomic_write_bytes(self._marker(chunk), json.dumps(marker).encode())

    def finish(self) -> bool:
        """Check every chunk against its marker and rename the matrix into place (under the lock); whether
        it is complete. A chunk whose rows no longer match its marker loses the marker (it is computed again)."""
        with self.lock:
            if self.complete():
                return True
            store_id = self._store_id()
            marked = [self._marked_digest(i, store_id) for i in range(self.num_chunks)]
            if not self.partial.exists() or None in marked:
                return False
            matrix = np.load(self.partial, mmap_mode="r", allow_pickle=False)
            whole = _digest_header(matrix)
            changed = []
            for chunk, expected in enumerate(marked):
                rows = self.rows(chunk)
                block = np.ascontiguousarray(matrix[rows.start:rows.stop]).tobytes()
                whole.update(block)
                if hashlib.sha256(block).hexdigest() != expected:
                    changed.append(chunk)
            del matrix
            for chunk in changed:
                self._marker(chunk).unlink(missing_ok=True)
            if changed:
                return False
            record = {"shape": [self.num_rows, self.dim], "sha256": whole.hexdigest()}
            atomic_write_bytes(self.record, json.dumps(record).encode(), durable=True)
            os.replace(self.partial, self.path)
            shutil.rmtree(self.done_dir, ignore_errors=True)
            self.id_file.unlink(missing_ok=True)
            # every section under the lock starts by checking complete(), so a process that still waits on
            # the removed lock file finds the store complete and does nothing
            Path(self.lock.lock_file).unlink(missing_ok=True)
            return True

    def fill(self, compute: Callable[[range], np.ndarray], rank: int = 0, world_size: int = 1,
             on_chunk: Callable[[int], None] | None = None) -> bool:
        """Compute (``compute(rows) -> float32 [len(rows), d]``) and write this rank's missing chunks, then
        finish the store if every chunk is done; whether it is complete. A single process (``world_size``
        1) computes again any chunk the finishing check refuses, so it always ends complete."""
        while True:
            self._start()
            for chunk in self.missing_chunks(rank, world_size):
                features = compute(self.rows(chunk))
                if self.complete():  # another process (e.g. a probe) finished the store meanwhile
                    break
                try:
                    self.write_chunk(chunk, features)
                except FileNotFoundError:
                    if self.complete():  # finished by another process between the check and the write
                        break
                    raise
                if on_chunk is not None:
                    on_chunk(chunk)
            if self.finish() or world_size > 1 or not self.missing_chunks():
                return self.complete()

    def read(self) -> np.memmap:
        """The complete matrix, memory-mapped read-only: float32 [N, d]."""
        matrix = np.load(self.path, mmap_mode="r", allow_pickle=False)
        if matrix.dtype != np.float32 or matrix.shape != (self.num_rows, self.dim):
            raise ValueError(f"feature store {self.path} holds {matrix.dtype} {list(matrix.shape)}, not float32 "
                             f"[{self.num_rows}, {self.dim}]")
        return matrix

    def drop_untrusted(self) -> None:
        """Delete a finished matrix that has no record of this shape or cannot be read (under the lock): it
        is extracted again, never trusted."""
        with self.lock:
            if not self.path.exists():
                return
            if self._finished_record() is not None:
                try:
                    self.read()
                    return
                except (OSError, ValueError):
                    pass
            self.record.unlink(missing_ok=True)
            self.path.unlink(missing_ok=True)


def digest_of(matrix: np.memmap) -> str:
    """The recorded digest of the complete store a memory-mapped matrix (from :meth:`FeatureStore.read`)
    was read from."""
    return FeatureStore(matrix.filename, *matrix.shape).digest


def _digest_header(matrix: np.ndarray):
    return hashlib.sha256(f"{matrix.dtype.str}{matrix.shape}".encode())


def matrix_digest(matrix: np.ndarray) -> str:
    """SHA-256 of a matrix's dtype, shape and rows in order, read in blocks (a memory map is never loaded
    whole): the identity of a feature matrix, the one :attr:`FeatureStore.digest` records."""
    digest = _digest_header(matrix)
    for block in row_blocks(matrix):
        digest.update(np.ascontiguousarray(block).tobytes())
    return digest.hexdigest()


def row_blocks(matrix: np.ndarray, rows: int = DEFAULT_CHUNK_ROWS) -> Iterator[np.ndarray]:
    """``matrix`` [N, ...] in consecutive blocks of at most ``rows`` rows (views: a memory-mapped matrix
    is read one block at a time)."""
    for start in range(0, len(matrix), rows):
        yield matrix[start:start + rows]
