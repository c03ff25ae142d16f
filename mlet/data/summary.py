"""The summary of a build (``meta.json`` plus the cache size), printed as rich tables, and the
warning that padded or skipped short lines always get."""

from __future__ import annotations

import logging

log = logging.getLogger("mlet.data")


def short_line_note(summary: dict) -> str | None:
    """One line on the short lines a build padded or skipped (``None`` if there were none)."""
    short = summary.get("short_lines") or {}
    done = [f"{short[k]:,} {k}" for k in ("padded", "skipped") if short.get(k)]
    if not done:
        return None
    first = (short.get("examples") or [{}])[0]
    where = f", first {first['file']}, line {first['line']}" if first else ""
    return (f"short lines (fewer fields than the format's, the trailing empty ones stripped): {' and '.join(done)} "
            f"(data.on_short_line={short['policy']}{where})")


def warn_short_lines(summary: dict) -> None:
    note = short_line_note(summary)
    if note:
        log.warning("%s: %s", summary["name"], note)


def print_summary(summary: dict) -> None:
    """A rich table: split sizes and positive rates, fields, skipped and short lines, speed, cache size."""
    from rich.console import Console
    from rich.table import Table

    console = Console(stderr=True)
    secs = summary["build_seconds"]
    console.print(f"[bold]{summary['name']}[/bold]: {summary['lines_read']:,} lines in {secs:.1f} s "
                  f"({summary['lines_read'] / max(secs, 1e-9):,.0f} lines/s), cache {summary['cache_bytes'] / 2**20:,.1f} MiB",
                  soft_wrap=True)
    t = Table()
    for col in ("split", "rows", "positive rate"):
        t.add_column(col, justify="right")
    for name, n in summary["splits"].items():
        rate = summary["positive_rate"][name]
        t.add_row(name, f"{n:,}", "-" if rate is None else f"{rate:.4f}")
    console.print(t)
    f = Table(title=f"{len(summary['cat_names'])} categorical fields ({len(summary['dense_names'])} dense)",
              title_justify="left")
    for col in ("field", "cardinality", "min count", "OOV train", "OOV test"):
        f.add_column(col, justify="right")
    oov = summary["oov_rate"]
    for i, name in enumerate(summary["cat_names"]):
        tr = oov["train"][i] if oov["train"] else None
        te = oov["test"][i] if oov["test"] else None
        f.add_row(name, f"{summary['cardinalities'][i]:,}", str(summary["min_counts"][i]),
                  "-" if tr is None else f"{tr:.2%}", "-" if te is None else f"{te:.2%}")
    console.print(f)
    extra = [f"skipped bad lines: {summary['skipped_lines']:,}"]
    for e in summary.get("bad_line_examples", [])[:3]:
        extra.append(f"  e.g. {e['file']}, line {e['line']}, {e['field']}: {e['reason']}")
    short = summary.get("short_lines") or {}
    extra.append(short_line_note(summary) or f"short lines: 0 (data.on_short_line={short.get('policy', '-')})")
    if summary.get("rows_dropped"):
        extra.append(f"rows left out by sampling: {summary['rows_dropped']:,}")
    extra.append(f"cache: {summary.get('path', '')}")
    console.print("\n".join(extra), soft_wrap=True, highlight=False)
