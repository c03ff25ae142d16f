"""MovieLens-100K as a CTR dataset: the one real recommendation dataset reachable without an
account, so a first-class citizen of the tests.

The files come from the PyPI wheel of RecBole (``pip download --no-deps recbole==1.2.1``), which
ships them at ``recbole/dataset_example/ml-100k/``; only the three files are unzipped into
``<cache_dir>/raw/ml-100k/`` (recbole is never installed, nothing is committed). They are
tab-separated with typed headers (``user_id:token``, ``rating:float``, ``class:token_seq``):

* ``ml-100k.inter``: ``user_id item_id rating timestamp`` (100,000 ratings);
* ``ml-100k.user``: ``user_id age gender occupation zip_code`` (943 users);
* ``ml-100k.item``: ``item_id movie_title release_year class`` (1,682 movies; ``class`` holds
  the space-separated genres).

Each rating is a row: label ``rating >= 4``; categorical fields ``user_id, item_id, age, gender,
occupation, zip_code, release_year, genre``; no dense features. A movie's genres form one
categorical value: ``genre=combination`` (default) keeps the whole set ("Action Adventure
Thriller", 216 distinct values, nothing lost), ``genre=first`` keeps the first genre only (19
values). Split: random 8:1:1 with a fixed seed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from mlet.data import splits as S
from mlet.errors import InputError, MletError
from mlet.data.parsing import Chunk, ParseContext
from mlet.data.segments import Segment
from mlet.data.source import DataOptionError, PreparedSource
from mlet.data.textparse import token_keys

RECBOLE_VERSION = "1.2.1"
WHEEL_DIR = "recbole/dataset_example/ml-100k/"
FILES = {"inter": "ml-100k.inter", "user": "ml-100k.user", "item": "ml-100k.item"}
FIELDS = ["user_id", "item_id", "age", "gender", "occupation", "zip_code", "release_year", "genre"]
GENRE_MODES = ("combination", "first")


class DownloadError(MletError, RuntimeError):
    """The MovieLens-100K files could not be fetched."""


def _complete(folder: Path) -> bool:
    return all((folder / f).is_file() for f in FILES.values())


def fetch_ml100k(dest: str | os.PathLike, version: str = RECBOLE_VERSION) -> Path:
    """Unzip the three ML-100K files from the recbole wheel into ``dest`` (once; atomic)."""
    dest = Path(dest)
    if _complete(dest):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".ml-100k-download-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               "--retries", "1", "--timeout", "20", f"recbole=={version}", "-d", tmp]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise DownloadError(f"could not run {' '.join(cmd)}: {exc}") from exc
        wheels = list(Path(tmp).glob("recbole-*.whl"))
        if proc.returncode != 0 or not wheels:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            raise DownloadError(
                f"`pip download recbole=={version}` failed ({' / '.join(tail)}). Without network access, put "
                f"{', '.join(FILES.values())} in a folder and set data.path to it."
            )
        staging = Path(tmp) / "ml-100k"
        staging.mkdir()
        with zipfile.ZipFile(wheels[0]) as z:
            for name in FILES.values():
                info = z.getinfo(WHEEL_DIR + name)
                (staging / name).write_bytes(z.read(info))
                stamp = time.mktime(info.date_time + (0, 0, -1))  # the wheel's date: stable fingerprints
                os.utime(staging / name, (stamp, stamp))
        try:
            os.rename(staging, dest)
        except OSError:
            if not _complete(dest):  # a concurrent fetch may have won
                raise
    return dest


def read_atomic(path: Path, required: Sequence[str], ctx: ParseContext, floats: Sequence[str] = ()):
    """A RecBole atomic file -> (column index by name, rows of raw byte fields, line numbers).

    Header fields are ``name:type``; bad lines (field count, undecodable bytes, non-numeric
    floats) are raised or skipped, short lines (the last field not empty) padded, skipped or
    raised, through ``ctx``."""
    data = path.read_bytes()
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    if not lines:
        raise InputError(f"{path}: empty file (a header line naming the columns is needed)")
    header = lines[0].rstrip(b"\r").decode("utf-8", errors="replace").split("\t")
    names = [h.split(":", 1)[0] for h in header]
    col = {n: i for i, n in enumerate(names)}
    missing = [r for r in required if r not in col]
    if missing:
        raise InputError(f"{path}, line 1: the header {header} lacks the column(s) {missing}")
    float_cols = [col[f] for f in floats]
    rows, numbers = [], []
    for number, raw in enumerate(lines[1:], start=2):
        raw = raw.rstrip(b"\r")
        parts = raw.split(b"\t")
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            f = raw[: exc.start].count(b"\t")
            ctx.reject(number, f"field {f + 1} ({names[min(f, len(names) - 1)]})",
                       f"undecodable byte 0x{raw[exc.start]:02x} (not UTF-8)", path=str(path))
            continue
        if not raw:
            ctx.reject(number, "whole line", "empty line", path=str(path))
            continue
        if len(parts) < len(names) and parts[-1] and ctx.on_short_line != "error":  # stripped trailing fields
            if ctx.on_short_line == "skip":
                ctx.short_skipped += 1
                ctx.short_line(path, number)
                continue
            ctx.padded += 1
            ctx.short_line(path, number)
            parts += [b""] * (len(names) - len(parts))
        if len(parts) != len(names):
            ctx.reject(number, "whole line", f"{len(parts)} fields where {len(names)} are expected", path=str(path),
                       short=len(parts) < len(names) and bool(parts[-1]))
            continue
        bad = None
        for j in float_cols:
            try:
                float(parts[j])
            except ValueError:
                bad = j
                break
        if bad is not None:
            ctx.reject(number, f"field {bad + 1} ({names[bad]})", f"not a number: {parts[bad][:40].decode()!r}",
                       path=str(path))
            continue
        rows.append(parts)
        numbers.append(number)
    return col, rows, numbers


class MovieLens100K(PreparedSource):
    """MovieLens-100K ratings as CTR data (see the module docstring).

    Args:
        path: a folder with ``ml-100k.inter/.user/.item``; ``None`` downloads them (recbole wheel)
            into ``<cache_dir>/raw/ml-100k`` on first use.
        genre: ``combination`` or ``first`` (how the multi-valued genre becomes one category).
        threshold: label is ``rating >= threshold`` (4).
        min_count: categories seen fewer times in training -> OOV (1).
        fractions, seed: the random split (8:1:1, seed 2018).
        inter: another interactions file in the ``.inter`` format (default: the folder's
            ``ml-100k.inter``), its user and item features still joined from the folder's
            ``.user`` / ``.item`` (prediction on new interactions).
        cache_dir, on_bad_line, on_short_line, workers, progress: see
            :class:`mlet.data.source.PreparedSource`.

    Prediction (:meth:`prediction_source`) reads an interactions file in the ``.inter`` format,
    joined with the ``.user`` / ``.item`` files of this source's folder.
    """

    def __init__(self, path: str | os.PathLike | None = None, cache_dir: str | os.PathLike = "data_cache",
                 genre: str = "combination", threshold: float = 4.0, min_count: int = 1,
                 fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 2018,
                 recbole_version: str = RECBOLE_VERSION, inter: str | os.PathLike | None = None, **kwargs) -> None:
        super().__init__(cache_dir, **kwargs)
        self.inter = Path(inter) if inter else None
        if genre not in GENRE_MODES:
            raise DataOptionError(f"data.genre must be one of {GENRE_MODES}, got {genre!r}")
        self.path = Path(path) if path else None
        self.genre = genre
        self.threshold = float(threshold)
        self.min_count = int(min_count)
        self.fractions = [float(f) for f in fractions]
        self.seed = int(seed)
        self.recbole_version = recbole_version
        self.name = "movielens100k"
        self.dense_names, self.cat_names = [], list(FIELDS)
        self.min_counts = [self.min_count] * len(FIELDS)

    @property
    def folder(self) -> Path:
        return self.path if self.path is not None else self.cache_dir / "raw" / "ml-100k"

    def fetch(self) -> None:
        if self.path is None:
            fetch_ml100k(self.folder, self.recbole_version)

    def raw_files(self) -> list[Path]:
        files = [self.folder / FILES[k] for k in ("inter", "user", "item")]
        if self.inter is not None:
            files[0] = self.inter
        return files

    def options(self) -> dict:
        return {"genre": self.genre, "threshold": self.threshold, "min_count": self.min_count,
                "fractions": self.fractions, "seed": self.seed}

    def prediction_source(self, raw: str | os.PathLike, labeled: bool = True) -> "MovieLens100K":
        reader = self.for_reading(labeled)
        reader.inter = Path(raw)
        return reader

    def segments(self) -> list[Segment]:
        inter = self.raw_files()[0]
        return [Segment(0, 0, str(inter), 0, None, 1, inter.stat().st_size)]

    def parse(self, segment: Segment, ctx: ParseContext) -> Iterator[Chunk]:
        inter_path, user_path, item_path = self.raw_files()
        ucol, users, _ = read_atomic(user_path, ["user_id", "age", "gender", "occupation", "zip_code"], ctx)
        icol, items, _ = read_atomic(item_path, ["item_id", "release_year", "class"], ctx)
        col, rows, _ = read_atomic(inter_path, ["user_id", "item_id", "rating"], ctx, floats=["rating"])
        ctx.lines = len(rows) + ctx.skipped
        user_feats = {u[ucol["user_id"]]: [u[ucol[c]] for c in ("age", "gender", "occupation", "zip_code")] for u in users}

        def genre(value: bytes) -> bytes:
            return value if self.genre == "combination" else (value.split()[:1] or [b""])[0]

        item_feats = {i[icol["item_id"]]: [i[icol["release_year"]], genre(i[icol["class"]])] for i in items}
        no_user, no_item = [b""] * 4, [b""] * 2
        columns: list[list[bytes]] = [[] for _ in FIELDS]
        labels = np.empty(len(rows), dtype=np.int8)
        for r, parts in enumerate(rows):
            u, i = parts[col["user_id"]], parts[col["item_id"]]
            for j, v in enumerate([u, i, *user_feats.get(u, no_user), *item_feats.get(i, no_item)]):
                columns[j].append(v)
            labels[r] = float(parts[col["rating"]]) >= self.threshold
        keys = np.stack([token_keys(c) for c in columns], axis=1) if rows else np.zeros((0, len(FIELDS)), np.int64)
        ctx.progress(segment.size, len(rows))
        yield Chunk(labels, np.zeros((len(rows), 0), np.float32), keys)

    def assign(self, labels, rows_per_file, presplit) -> np.ndarray:
        return S.random_fractions(len(labels), self.fractions, self.seed)
