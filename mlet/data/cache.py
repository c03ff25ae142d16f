"""The cache directory of a prepared source: its name (a fingerprint of the options that change
the output and of the raw files), and building it atomically.

``<cache_dir>/<name>-<fingerprint>`` is keyed by a hash of the options that change the output
and of each raw file's path, size and modification time (cheap: no hashing of file contents, so
an edit that keeps size and mtime goes unnoticed; ``touch`` forces a rebuild). It is built in a
temporary directory beside it and renamed when complete, so an interrupted or failed run never
leaves a directory a later run would trust; temporary directories of dead processes are removed
by the next run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import socket
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

log = logging.getLogger("mlet.data")


def fingerprint(source_name: str, options: dict, raw_files: Sequence[Path], version: int) -> dict:
    """What the cache of a build depends on, and its digest."""
    files = []
    for p in raw_files:
        p = Path(p)
        if not p.is_file():
            raise FileNotFoundError(f"{source_name.rsplit('.', 1)[-1]}: raw file {p} does not exist")
        st = p.stat()
        files.append({"path": str(p.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns})
    payload = {"pipeline_version": version, "source": source_name, "options": options, "files": files}
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()
    return {**payload, "digest": digest}


def is_complete(path: Path) -> bool:
    """A cache directory this pipeline finished (``meta.json`` is written last)."""
    return (path / "meta.json").is_file()


@contextmanager
def building(final: Path) -> Iterator[Path]:
    """A fresh temporary directory beside ``final``, renamed to ``final`` when the block
    completes and removed when it fails. A concurrent build that completed first wins."""
    root = final.parent
    root.mkdir(parents=True, exist_ok=True)
    if final.exists():  # not made by this pipeline (it renames complete builds only): not trusted
        shutil.rmtree(final)
    tmp = root / f".{final.name}.tmp-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        try:
            os.rename(tmp, final)
        except OSError:
            if not is_complete(final):  # not a concurrent build that won the race
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def clean_stale(root: Path) -> None:
    """Remove temporary build directories of processes on this host that no longer run."""
    host = socket.gethostname()
    for p in root.glob(".*.tmp-*"):
        try:
            rest = p.name.rsplit(".tmp-", 1)[1]
            h, pid, _ = rest.rsplit("-", 2)
            pid = int(pid)
        except (IndexError, ValueError):
            continue
        if h != host or pid == os.getpid():
            continue
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            log.info("removing %s (an interrupted build)", p)
            shutil.rmtree(p, ignore_errors=True)
        except PermissionError:
            pass
