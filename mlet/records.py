"""Run records: one ``record.json`` per finished run, written atomically.

A record exists only once its run has finished and its file is complete (written to a temporary
file, flushed to disk, then renamed), so a sweep can trust any record it finds. Write errors
(disk full, permissions) propagate: a run never silently lacks its record.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

RECORD_NAME = "record.json"


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_record(path: str | os.PathLike, record: dict[str, Any]) -> Path:
    """Write ``record`` as JSON to ``path`` atomically, readable like any other file the run writes
    (mode 0666 less the umask; ``mkstemp`` alone would leave it 0600)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".record.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(_clean(record), fh, indent=2, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def find_records(roots: Iterable[str | os.PathLike]) -> Iterator[Path]:
    for root in roots:
        root = Path(root)
        if root.is_file() and root.name == RECORD_NAME:
            yield root
        elif root.is_dir():
            yield from sorted(root.rglob(RECORD_NAME))


def read_record(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: line {exc.lineno}: not a valid run record ({exc.msg})") from exc
    record.setdefault("path", str(path.parent))
    return record
