"""The cache: reuse, invalidation by options and by source files, atomicity under failures."""

from __future__ import annotations

import multiprocessing as mp
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
from tests.helpers.rawdata import criteo_rows, write_criteo

import mlet.data.phases as phases
from mlet.data.criteo import CriteoKaggle


@pytest.fixture()
def raw(tmp_path):
    return write_criteo(tmp_path / "train.txt", criteo_rows(200, seed=30), strip_every=5)


def source(raw, cache, **kw):
    # the raw file strips trailing empty fields on some lines, as re-hosted copies do: padded
    return CriteoKaggle(raw, cache_dir=cache, progress=False, workers=1, **{"on_short_line": "pad", **kw})


def entries(cache):
    return sorted(p.name for p in cache.iterdir())


@pytest.mark.slow  # starts processes
def test_second_prepare_reuses_the_cache(raw, tmp_path):
    cache = tmp_path / "cache"
    first = source(raw, cache)
    path = first.prepare()
    assert first.built
    stamp = (path / "meta.json").stat().st_mtime_ns
    files = {p.name: p.stat().st_mtime_ns for p in path.iterdir()}
    second = source(raw, cache)
    assert second.prepare() == path and not second.built
    assert (path / "meta.json").stat().st_mtime_ns == stamp
    assert {p.name: p.stat().st_mtime_ns for p in path.iterdir()} == files
    assert entries(cache) == [path.name]
    # settings that do not change the arrays do not change the cache either
    third = CriteoKaggle(raw, cache_dir=cache, progress=False, workers=2, block_bytes=1 << 16, segment_bytes=4096,
                         on_short_line="pad")
    assert third.prepare() == path and not third.built


def test_option_change_builds_a_new_cache(raw, tmp_path):
    cache = tmp_path / "cache"
    a = source(raw, cache).prepare()
    other = source(raw, cache, min_count=3)
    b = other.prepare()
    assert other.built and a != b and (a / "meta.json").is_file() and (b / "meta.json").is_file()
    assert source(raw, cache, protocol="bars_x4_001").prepare() not in (a, b)
    assert source(raw, cache, on_bad_line="skip").prepare() not in (a, b)


def test_source_change_builds_a_new_cache(raw, tmp_path):
    cache = tmp_path / "cache"
    a = source(raw, cache).prepare()
    st = raw.stat()
    os.utime(raw, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # same content, new mtime
    src = source(raw, cache)
    b = src.prepare()
    assert src.built and b != a
    write_criteo(raw, criteo_rows(201, seed=31))  # new content
    src = source(raw, cache)
    c = src.prepare()
    assert src.built and c not in (a, b)
    assert sum(len(s) for s in src.load().splits.values()) == 201
    fp = src.fingerprint()
    assert fp["files"][0]["path"] == str(raw.resolve()) and "size" in fp["files"][0] and "mtime_ns" in fp["files"][0]


def test_exception_mid_write_leaves_nothing_trusted(raw, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    real = phases.encode_segment

    def failing(tmp, index, *args, **kwargs):
        real(tmp, index, *args, **kwargs)  # the split files are written ...
        raise RuntimeError("disk on fire")  # ... and then the build fails

    monkeypatch.setattr(phases, "encode_segment", failing)
    with pytest.raises(RuntimeError, match="disk on fire"):
        source(raw, cache).prepare()
    assert entries(cache) == []  # no cache, no temporary directory
    monkeypatch.setattr(phases, "encode_segment", real)
    src = source(raw, cache)
    path = src.prepare()
    assert src.built and (path / "meta.json").is_file()
    assert sum(len(s) for s in src.load().splits.values()) == 200


def _killed_build(raw, cache):
    def die(*args, **kwargs):
        os._exit(3)  # like SIGKILL: no cleanup runs

    phases.count_segment = die
    source(raw, cache).prepare()


@pytest.mark.slow  # starts processes
def test_killed_build_is_cleaned_up_and_rebuilt(raw, tmp_path):
    cache = tmp_path / "cache"
    proc = mp.get_context("fork").Process(target=_killed_build, args=(raw, cache))
    proc.start()
    proc.join(60)
    assert proc.exitcode == 3
    left = entries(cache)
    assert len(left) == 1 and ".tmp-" in left[0]  # the dead build's temporary directory
    assert not any((cache / n / "meta.json").exists() for n in left)
    src = source(raw, cache)
    path = src.prepare()
    assert src.built and entries(cache) == [path.name]  # the stale directory is gone


@pytest.mark.slow  # starts processes
def test_temporary_directory_of_a_live_process_is_left_alone(raw, tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        live = cache / f".x-0.tmp-{socket.gethostname()}-{sleeper.pid}-abcd1234"
        live.mkdir()
        dead_pid = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                                  text=True).stdout.strip()
        dead = cache / f".x-0.tmp-{socket.gethostname()}-{dead_pid}-abcd1234"
        dead.mkdir()
        (dead / "seg0000.ids").write_bytes(b"partial")
        source(raw, cache).prepare()
        assert live.exists() and not dead.exists()
    finally:
        sleeper.kill()


def test_untrusted_directory_without_meta_is_rebuilt(raw, tmp_path):
    cache = tmp_path / "cache"
    src = source(raw, cache)
    final = src.cache_path
    final.mkdir(parents=True)
    (final / "train.cat.npy").write_bytes(b"garbage")
    path = src.prepare()
    assert src.built and path == final
    assert src.load().splits["train"].cat.dtype == np.int32
