"""Features on disk: one float32 ``.npy`` matrix [N, d], written chunk by chunk, read memory-mapped.

A store is the file ``<name>.npy`` once complete. While it is being written it is
``<name>.npy.partial`` (the matrix, created sparse at its full size) beside ``<name>.npy.done/``, which
holds one empty marker file per finished chunk, named by its rows (``<start>-<stop>``) and created only
after those rows are flushed to disk. So:

* an interrupted extraction resumes at the chunks without a marker (a kill mid-chunk loses only that
  chunk), and a resume or a rank with another chunk size trusts only the markers of its own row ranges;
* several processes (the ranks of a distributed job, on one file system) write disjoint chunks of one
  store at once: chunk ``i`` belongs to rank ``i % world_size``; the process that finds every marker
  present (under a file lock) renames the matrix into place;
* a complete store is read with ``np.load(mmap_mode="r")``: pages come from the file as they are
  touched and count as file-backed, not anonymous, memory, whatever N is.

Numpy and filelock only: no torch (the encoder that fills a store lives in ``features``).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from filelock import FileLock

from .files import atomic_write_bytes

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
        self.partial = self.path.with_name(self.path.name + ".partial")
        self.done_dir = self.path.with_name(self.path.name + ".done")
        self.lock = FileLock(str(self.path.with_name(self.path.name + ".lock")))

    @property
    def num_chunks(self) -> int:
        return -(-self.num_rows // self.chunk_rows)

    def rows(self, chunk: int) -> range:
        """The row range of chunk ``chunk``."""
        return range(chunk * self.chunk_rows, min(self.num_rows, (chunk + 1) * self.chunk_rows))

    def complete(self) -> bool:
        return self.path.exists()

    def missing_chunks(self, rank: int = 0, world_size: int = 1) -> list[int]:
        """The unfinished chunks of rank ``rank`` of ``world_size`` (chunk i belongs to rank i % world_size)."""
        if self.complete():
            return []
        return [i for i in range(rank, self.num_chunks, world_size) if not self._marker(i).exists()]

    def _marker(self, chunk: int) -> Path:
        """The marker of chunk ``chunk``, named by its row range."""
        rows = self.rows(chunk)
        return self.done_dir / f"{rows.start}-{rows.stop}"

    def _start(self) -> None:
        """Create the sparse matrix file and the marker folder unless they exist (under the lock)."""
        with self.lock:
            if self.complete():
                return
            if self.partial.exists() and self._partial_shape() != (self.num_rows, self.dim):
                self._discard()  # a stale store of another shape (e.g. killed while being created)
            if not self.partial.exists():
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
        shutil.rmtree(self.done_dir, ignore_errors=True)

    def write_chunk(self, chunk: int, features: np.ndarray) -> None:
        """Write the rows of chunk ``chunk`` (float32 [len(rows), d]) durably, then mark it done."""
        rows = self.rows(chunk)
        if features.shape != (len(rows), self.dim):
            raise ValueError(f"chunk {chunk} must be [{len(rows)}, {self.dim}], got {list(features.shape)}")
        matrix = np.load(self.partial, mmap_mode="r+", allow_pickle=False)
        matrix[rows.start:rows.stop] = features
        matrix.flush()
        del matrix
        with open(self.partial, "rb+") as handle:
            os.fsync(handle.fileno())
        atomic_write_bytes(self._marker(chunk), b"")

    def finish(self) -> bool:
        """Rename the matrix into place when every chunk is done (under the lock); whether it is complete."""
        with self.lock:
            if self.complete():
                return True
            if not self.partial.exists() or any(not self._marker(i).exists() for i in range(self.num_chunks)):
                return False
            os.replace(self.partial, self.path)
            shutil.rmtree(self.done_dir, ignore_errors=True)
            # every section under the lock starts by checking complete(), so a process that still waits on
            # the removed lock file finds the store complete and does nothing
            Path(self.lock.lock_file).unlink(missing_ok=True)
            return True

    def fill(self, compute: Callable[[range], np.ndarray], rank: int = 0, world_size: int = 1,
             on_chunk: Callable[[int], None] | None = None) -> bool:
        """Compute (``compute(rows) -> float32 [len(rows), d]``) and write this rank's missing chunks, then
        finish the store if every chunk is done; whether it is complete."""
        self._start()
        for chunk in self.missing_chunks(rank, world_size):
            features = compute(self.rows(chunk))
            if self.complete():  # another process (e.g. a probe) finished the store meanwhile
                break
            self.write_chunk(chunk, features)
            if on_chunk is not None:
                on_chunk(chunk)
        return self.finish()

    def read(self) -> np.memmap:
        """The complete matrix, memory-mapped read-only: float32 [N, d]."""
        matrix = np.load(self.path, mmap_mode="r", allow_pickle=False)
        if matrix.dtype != np.float32 or matrix.shape != (self.num_rows, self.dim):
            raise ValueError(f"feature store {self.path} holds {matrix.dtype} {list(matrix.shape)}, not float32 "
                             f"[{self.num_rows}, {self.dim}]")
        return matrix


def row_blocks(matrix: np.ndarray, rows: int = DEFAULT_CHUNK_ROWS) -> Iterator[np.ndarray]:
    """``matrix`` [N, ...] in consecutive blocks of at most ``rows`` rows (views: a memory-mapped matrix
    is read one block at a time)."""
    for start in range(0, len(matrix), rows):
        yield matrix[start:start + rows]
