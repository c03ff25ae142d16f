"""Every command shown in README.md and docs/*.md names a real console script, real config groups,
options and keys, and real command-line flags.

Commands are read from fenced code blocks (and the indented command lines the docs use). A Hydra
command (``mlet-train``, ``mlet-prepare``) is composed with its overrides exactly as written (a swept
list contributes its first value, ``glob(...)`` every match), so a misspelt group, option or key
fails here; an argparse command's ``--flags`` must appear in its ``--help``. Running the README's
commands themselves is ``tests/test_readme_commands.py`` (slow).
"""

from __future__ import annotations

import fnmatch
import re
import shlex
import subprocess
import sys
import tomllib
from functools import cache
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra

import mlet.conf

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
HYDRA_APPS = {"mlet-train": "train", "mlet-prepare": "prepare"}
CONFIG_DIR = Path(mlet.conf.__file__).parent  # the packaged configs the commands compose


def _blocks(text: str) -> list[str]:
    """The lines of fenced code blocks, and indented lines that start with a command."""
    lines, inside = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            inside = not inside
            continue
        if inside or re.match(r"^ {4}\S", line):
            lines.append(line.strip())
    joined, buf = [], ""
    for line in lines:  # backslash continuations
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        joined.append(buf + line)
        buf = ""
    return joined


def commands() -> list[tuple[str, list[str]]]:
    """(``file: line``, argv) of every ``mlet-*`` invocation in the docs."""
    found = []
    for doc in DOCS:
        for line in _blocks(doc.read_text()):
            line = line.split(" #", 1)[0]
            line = re.sub(r"<[\w .-]+>", "PLACEHOLDER", line)  # <run>, <sweep dir>: any value
            for part in re.split(r"&&|;|\|\|?", line):
                try:
                    argv = shlex.split(part)
                except ValueError:
                    continue
                if argv and argv[0] == "$":
                    continue  # a transcript (a command shown with its output, e.g. an error), not a recipe
                while argv and (re.match(r"^[A-Z_]+=", argv[0]) or argv[0] in {"/usr/bin/time", "time"}):
                    argv = argv[1:]  # environment settings, a timer
                if argv and re.fullmatch(r"mlet-[a-z]+", argv[0]):
                    found.append((f"{doc.name}: {line[:70]}", argv))
    return found


COMMANDS = commands()


def test_the_docs_show_every_console_script():
    scripts = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"])
    shown = {argv[0] for _, argv in COMMANDS}
    assert shown <= scripts, f"the docs show commands that are not installed: {sorted(shown - scripts)}"
    assert scripts <= shown, f"console scripts the docs never show: {sorted(scripts - shown)}"


def _first_values(override: str) -> list[str]:
    """A swept override as the overrides of its first point (``glob`` expands to every match)."""
    key, _, value = override.partition("=")
    glob = re.fullmatch(r"glob\((.*)\)", value)
    if glob:
        group = CONFIG_DIR / key.lstrip("+~")
        options = sorted(p.stem for p in group.glob("*.yaml") if fnmatch.fnmatch(p.stem, glob.group(1)))
        assert options, f"{override}: no option of {group.name} matches"
        return [f"{key}={o}" for o in options]
    if "," in value and not value.startswith("["):
        value = value.split(",")[0]
    return [f"{key}={value}"]


@pytest.mark.parametrize("where,argv", [c for c in COMMANDS if c[1][0] in HYDRA_APPS],
                         ids=[w for w, a in COMMANDS if a[0] in HYDRA_APPS])
def test_hydra_command_composes(where, argv):
    overrides = [a for a in argv[1:] if a not in {"-m", "--multirun"} and not a.startswith("--")]
    points: list[list[str]] = [[]]
    for override in overrides:
        if override.startswith("hydra.") or "=" not in override:
            continue  # hydra.* settings are Hydra's own (run dir, launcher fields)
        points = [p + [v] for p in points for v in _first_values(override)]
    for point in points:
        GlobalHydra.instance().clear()
        with initialize_config_module(config_module="mlet.conf", version_base="1.3"):
            try:
                compose(config_name=HYDRA_APPS[argv[0]], overrides=point, return_hydra_config=True)
            except Exception as exc:  # noqa: BLE001 - the message names the bad override
                pytest.fail(f"{where}: {' '.join(argv)}\n  does not compose: {exc}")
    GlobalHydra.instance().clear()


@cache
def _help(script: str) -> str:
    return subprocess.run([script, "--help"], capture_output=True, text=True, timeout=120).stdout


@pytest.mark.parametrize("where,argv", [c for c in COMMANDS if c[1][0] not in HYDRA_APPS],
                         ids=[w for w, a in COMMANDS if a[0] not in HYDRA_APPS])
@pytest.mark.slow  # starts processes
def test_argparse_command_flags_exist(where, argv):
    script = Path(sys.executable).parent / argv[0]
    flags = [a.split("=")[0] for a in argv[1:] if a.startswith("--")]
    text = _help(str(script))
    assert text, f"{argv[0]} --help printed nothing"
    missing = [f for f in flags if f not in text]
    assert not missing, f"{where}: {argv[0]} has no option {missing}"
