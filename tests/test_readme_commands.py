"""README.md's commands, run exactly as written, in order, in a fresh directory outside the
repository (slow: a sweep, trainings, a MovieLens download).

The two set-up commands at the top are what ``.ci/run`` itself does (``pip install -e``, then
``python -m pytest``, in a venv of its own); of them this runs the main job, ``mlet-train``. Every command of the README's
"The commands" block then runs as printed, so a README edit that breaks one fails here.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def readme_blocks() -> list[list[str]]:
    blocks, current = [], None
    for line in (ROOT / "README.md").read_text().splitlines():
        if line.startswith("```"):
            if current is None:
                current = []
            else:
                blocks.append(current)
                current = None
        elif current is not None and line.strip():
            current.append(line.strip())
    return blocks


def readme_commands() -> list[str]:
    setup, tests, commands = readme_blocks()[:3]
    assert len(setup) == 1 and setup[0].endswith("&& mlet-train"), setup
    assert len(tests) == 1 and tests[0].endswith("&& python -m pytest"), tests
    return ["mlet-train", *commands]


def test_the_readme_starts_with_the_two_commands():
    setup, tests = readme_blocks()[:2]
    prefix = "pip install -e '.[dev]' && "
    assert setup == [prefix + "mlet-train"] and tests == [prefix + "python -m pytest"]
    assert all(c.split()[0].startswith("mlet-") for c in readme_commands())


@pytest.mark.slow
@pytest.mark.timeout(3600)  # the main job, a run, a 30-job sweep, a MovieLens run: ~11 min at load 1
def test_readme_commands_run_as_written(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in {"MLET_DATA_DIR", "HYDRA_FULL_ERROR"}}
    env.update(PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}", WANDB_MODE="offline")
    for command in readme_commands():
        done = subprocess.run(command, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=3600)
        tail = (done.stdout + done.stderr)[-3000:]
        assert done.returncode == 0, f"README command failed ({done.returncode}): {command}\n{tail}"
    runs = sorted(p.parent.name for p in (tmp_path / "outputs" / "runs").glob("*/record.json"))
    assert "synthetic-dlrm-mlet-d16-k64-s0" in runs  # the main job, named by what it is
    assert (tmp_path / "outputs" / "report" / "report.md").is_file()
    sweep = list((tmp_path / "outputs" / "sweeps" / "quick_movielens100k").glob("*/record.json"))
    assert len(sweep) == 30
    inter = tmp_path / "data_cache" / "raw" / "ml-100k" / "ml-100k.inter"
    rows = len(inter.read_text().splitlines()) - 1  # one header line
    probs = (tmp_path / "probs.txt").read_text().split()
    assert len(probs) == rows and all(0.0 < float(p) < 1.0 for p in probs)
