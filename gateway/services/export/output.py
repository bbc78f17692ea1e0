"""Output written beside its final name and renamed at the end: never a half-written file."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import IO

from gateway.services.export.model import ExportError


def check_output(path: Path) -> None:
    """Before any work: the output must be a file name in a folder that exists."""
    if path.is_dir():
        raise ExportError(f"the output {path} is a folder; give a file name")
    if not path.parent.is_dir():
        raise ExportError(f"the folder {path.parent} does not exist")


class AtomicFile:
    """A temp file beside ``path``: ``close`` then ``commit`` puts it in place, ``discard``
    deletes it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        except OSError as exc:
            raise ExportError(f"cannot write in {path.parent}: {exc.strerror or exc}") from exc
        self.temp = Path(name)
        self.file: IO[bytes] = os.fdopen(handle, "wb", buffering=1 << 20)
        self.digest = hashlib.sha256()

    def write(self, data: bytes) -> None:
        self.digest.update(data)
        try:
            self.file.write(data)
        except OSError as exc:
            raise ExportError(f"cannot write {self.path}: {exc.strerror or exc}") from exc

    def close(self) -> None:
        try:
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()
            os.chmod(self.temp, 0o644)  # mkstemp's 0600 is no mode for a data set
        except OSError as exc:
            raise ExportError(f"cannot write {self.path}: {exc.strerror or exc}") from exc

    def commit(self) -> None:
        try:
            os.replace(self.temp, self.path)
        except OSError as exc:
            raise ExportError(f"cannot write {self.path}: {exc.strerror or exc}") from exc

    def discard(self) -> None:
        self.file.close()
        self.temp.unlink(missing_ok=True)
