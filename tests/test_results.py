"""The committed demonstrations agree with their committed run records.

A report folder under ``docs/results/`` that keeps its runs' records (``records/<job>/record.json``)
is re-made here, tables only, by the ``mlet-report docs/results/<name>/records ... --out
docs/results/<name>`` command that docs/fair-comparison.md gives for it; every committed CSV must come
out the same. So a number copied from those tables into the README traces back to the records, and a
report edited by hand, or made from other records or with other options, fails here.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import pandas as pd
import pytest

from mlet import report

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"
DOC = ROOT / "docs" / "fair-comparison.md"
PREFIX = "mlet-report docs/results/"


def _documented() -> dict[str, list[str]]:
    """Report folder name -> the argv (after ``mlet-report``) of its command in the doc."""
    commands: dict[str, list[str]] = {}
    for line in DOC.read_text().splitlines():
        if not line.strip().startswith(PREFIX):
            continue
        argv = shlex.split(line.strip())[1:]
        name = Path(argv[0]).parent.name
        assert argv[0] == f"docs/results/{name}/records", f"{DOC.name}: {line.strip()!r} reads {argv[0]}, not a records folder"
        assert argv[argv.index("--out") + 1] == f"docs/results/{name}", f"{DOC.name}: {line.strip()!r} writes elsewhere"
        assert name not in commands, f"{DOC.name}: two commands make docs/results/{name}"
        commands[name] = argv
    return commands


def _kept() -> list[str]:
    return sorted(p.parent.name for p in RESULTS.glob("*/records"))


def test_every_report_that_keeps_its_records_has_its_command_in_the_docs():
    assert set(_kept()) == set(_documented())


@pytest.mark.parametrize("name", _kept())
def test_the_documented_command_remakes_the_committed_tables_from_the_committed_records(name, tmp_path, monkeypatch):
    argv = _documented()[name]
    argv[argv.index("--out") + 1] = str(tmp_path)
    monkeypatch.chdir(ROOT)  # the records' paths in runs.csv are relative to the repository root
    assert report.main([*argv, "--no-plots"]) == 0
    committed = sorted(p.name for p in (RESULTS / name).glob("*.csv"))
    assert committed and committed == sorted(p.name for p in tmp_path.glob("*.csv"))
    for csv in committed:
        want, got = pd.read_csv(RESULTS / name / csv), pd.read_csv(tmp_path / csv)
        pd.testing.assert_frame_equal(got, want, check_exact=False, rtol=1e-9, obj=f"docs/results/{name}/{csv}")


# ---- the README's table of what survives each control comes from the committed reports -----------

README = ROOT / "README.md"
CONTROLS = ["none", "optimizer.lr", "embedding.table_init,embedding.init_std", "optimizer.lr + embedding.table_init,embedding.init_std"]


def _readme_survival_rows() -> list[list[str]]:
    """The rows of the README's table under "## How much of the MLET gain survives"."""
    text = README.read_text().split("## How much of the MLET gain survives", 1)[1].split("\n## ", 1)[0]
    rows = [line.strip().strip("|").split("|") for line in text.splitlines() if line.startswith("| ")]
    assert rows and rows[0][0].strip() == "data", "README: the survival table has moved or changed its header"
    return [[cell.strip() for cell in row] for row in rows[1:]]


def _number(cell: str) -> float:
    return float(cell.replace("−", "-").replace("+", ""))


def _matches(row: list[str], controls: pd.DataFrame) -> bool:
    data, model, d, *gains, tuned = row
    data = "movielens100k" if data.startswith("MovieLens-100K") else data
    model, _, k = model.partition(", k = ")
    cell = controls[(controls.data == data) & (controls.model == model.lower()) & (controls.embedding == "mlet")
                    & (controls.k == float(k or 64)) & (controls.dim == int(d))]
    if sorted(cell.control) != sorted(CONTROLS):
        return False
    by = cell.set_index("control")
    single, mlet = (_number(x) for x in tuned.split(" / "))
    both = by.loc[CONTROLS[3]]
    return (all(abs(by.loc[c, "gain"] - _number(g)) <= 0.00005 + 1e-12 for c, g in zip(CONTROLS, gains))
            and abs(both.reference_auc - single) <= 0.00005 + 1e-12 and abs(both.method_auc - mlet) <= 0.00005 + 1e-12)


def test_every_row_of_the_readme_survival_table_is_in_a_committed_report():
    reports = {p.parent.name: pd.read_csv(p) for p in sorted(RESULTS.glob("*/controls.csv"))}
    for row in _readme_survival_rows():
        found = [name for name, controls in reports.items() if _matches(row, controls)]
        assert found, f"README survival row {' | '.join(row)}: no docs/results/*/controls.csv has these four gains and tuned AUCs"
