"""Where a single run lives, and how it continues.

* A single run's directory is named by what it is, like a sweep job's
  (``outputs/runs/<data>-<model>-<embedding>-d<d>[-k<k>]-s<seed>[-<hash of other overrides>]``,
  ``hydra.run.dir: ${mlet.run_dir:...}``): the same command, started again, finds its run. An
  interrupted run (no ``record.json``) continues from its ``checkpoints/last.ckpt`` (``ckpt_path=last``,
  the default); a finished one is reported, not retrained (``force=true`` retrains from scratch).
* ``ckpt_path=<run>/checkpoints/<file>.ckpt`` continues that run, in its directory, with the run's
  own config (``<run>/config.yaml``, and the group choices from ``<run>/schema.json``): the
  network it builds is the one the checkpoint holds. An override given with it that contradicts
  that config is refused in one line naming the keys; the training length
  (``trainer.max_epochs``, ``max_steps``, ``max_time``), early stopping, the progress display and
  the logger may change.
* :func:`continue_command` is the command a user types to continue an interrupted run (printed on
  Ctrl-C): the one that started it.
"""

from __future__ import annotations

import json
import logging
import shlex
import sys
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from mlet import sweep
from mlet.errors import MletError

log = logging.getLogger("mlet.train")

CONFIG_NAME = "config.yaml"
CHECKPOINT_DIR = "checkpoints"
# May differ from the run's config when continuing it: how long to train, not what is trained.
MAY_CHANGE = ("trainer.max_epochs", "trainer.max_steps", "trainer.max_time", "callbacks.early_stopping",
              "callbacks.progress_log")
# Taken from the command line, not from the run's config: where things go and how they are shown.
CURRENT_KEYS = ("paths", "ckpt_path", "force", "keep_last_checkpoint", "keep_best_checkpoint", "tags", "train", "test")


def checkpoint_run_dir(ckpt_path: Any, base: str | Path) -> Path | None:
    """The run directory holding ``ckpt_path`` (``<run>/checkpoints/<file>``, ``<run>/config.yaml``
    present), else None (``last``, no checkpoint, or a file outside a run directory)."""
    if not isinstance(ckpt_path, str) or ckpt_path in ("", "last", "best", "hpc", "registry"):
        return None
    path = Path(ckpt_path).expanduser()
    if not path.is_absolute():
        path = Path(base) / path
    if path.parent.name != CHECKPOINT_DIR or not (path.parent.parent / CONFIG_NAME).is_file():
        return None
    return path.parent.parent.resolve()


def run_dir(runs_dir: str, root: DictConfig) -> str:
    """``hydra.run.dir``: the checkpoint's run directory when ``ckpt_path`` names one, else
    ``<runs_dir>/<job name>`` (:func:`mlet.sweep.job_dir_name`)."""
    found = checkpoint_run_dir(OmegaConf.select(root, "ckpt_path", default=None), sweep.launch_dir())
    if found is not None:
        return str(found)
    return str(Path(runs_dir) / sweep.job_dir_name(root))


def _given_overrides() -> list[str]:
    if not HydraConfig.initialized():
        return []
    return [str(o) for o in (OmegaConf.select(HydraConfig.get(), "overrides.task", default=[]) or [])]


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for k, v in node.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out or {prefix.rstrip("."): {}}
    return {prefix.rstrip("."): node}


def _changeable(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in MAY_CHANGE + CURRENT_KEYS) or key.startswith(
        tuple(p.rstrip(".") for p in sweep.NEUTRAL_PREFIXES)
    ) or key in sweep.NEUTRAL_KEYS


def _plain(cfg: DictConfig) -> dict[str, Any]:
    """``cfg`` resolved, without the ``hydra`` node (present in configs composed by tests)."""
    return {k: _resolved(cfg, k) for k in cfg if k != "hydra"}


def _resolved(cfg: DictConfig, key: str) -> Any:
    value = cfg[key]
    return OmegaConf.to_container(value, resolve=True) if isinstance(value, DictConfig) else value


def conflicts(cfg: DictConfig, saved: DictConfig, overrides: list[str]) -> list[str]:
    """``key: given X, the run has Y`` for every key the given overrides set differently from the
    run's config (keys that may change, and where-things-go keys, excepted)."""
    flat_given, flat_run = _flatten(_plain(cfg)), _flatten(OmegaConf.to_container(saved, resolve=False))
    # paths inside the output directory (checkpoint dirpath, default_root_dir) are the same place
    here = str(flat_given.get("paths.output_dir", "\0"))
    there = str(flat_run.get("paths.output_dir", "\0"))

    def same(a: Any, b: Any) -> bool:
        if isinstance(a, str) and isinstance(b, str):
            return a.replace(here, "<run>") == b.replace(there, "<run>")
        return a == b

    found = []
    for key in sorted({sweep.override_key(o) for o in overrides}):
        if key == "ckpt_path" or _changeable(key):
            continue
        node_keys = [k for k in flat_given.keys() | flat_run.keys() if k == key or k.startswith(key + ".")]
        if not node_keys:  # a global package (experiment=..., +sweep=...): compare everything
            node_keys = list(flat_given.keys() | flat_run.keys())
        for k in sorted(node_keys):
            a, b = flat_given.get(k, "<unset>"), flat_run.get(k, "<unset>")
            if not _changeable(k) and not same(a, b):
                found.append(f"{k}: given {a!r}, the run has {b!r}")
    return sorted(set(found))


def restore_run_config(cfg: DictConfig) -> DictConfig:
    """The config to train with: ``cfg`` itself, unless ``ckpt_path`` names a checkpoint of a run
    directory, whose own config is then restored (see the module docstring)."""
    base = sweep.launch_dir()
    found = checkpoint_run_dir(cfg.get("ckpt_path"), base)
    if found is None:
        return cfg
    saved = OmegaConf.load(found / CONFIG_NAME)
    bad = conflicts(cfg, saved, _given_overrides())
    if bad:
        shown = "; ".join(bad[:5]) + (f"; and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise MletError(
            f"ckpt_path={cfg.ckpt_path}: the run in {found} was trained with another config ({shown}); "
            f"continue it without those overrides (its {CONFIG_NAME} is restored), or start a new run without ckpt_path"
        )
    restored = saved
    with open_dict(restored):
        for key in CURRENT_KEYS:
            if key in cfg:
                restored[key] = cfg[key]
        for override in _given_overrides():  # training length, early stopping, display: as given now
            key = sweep.override_key(override)
            node = "logger" if key.split(".")[0] == "logger" else key  # a logger chosen now replaces the run's
            if (_changeable(key) and not key.startswith("hydra.") and key.split(".")[0] not in CURRENT_KEYS
                    and OmegaConf.select(cfg, node, default=None) is not None):
                OmegaConf.update(restored, node, OmegaConf.select(cfg, node), merge=False, force_add=True)
    OmegaConf.set_struct(restored, True)
    _restore_choices(found)
    log.info("continuing the run in %s with its own config (%s)", found, found / CONFIG_NAME)
    return restored


def _restore_choices(run: Path) -> None:
    """The run's config group choices (data=..., model=...; ``schema.json``) as this process's Hydra
    choices, so that the record, job names and wandb tags name the restored run, not the defaults.
    (``.hydra/hydra.yaml`` cannot tell: Hydra has rewritten it for this process by now.)"""
    schema = run / "schema.json"
    choices = json.loads(schema.read_text()).get("choices") if schema.is_file() else None
    if not HydraConfig.initialized():
        return
    if not choices:
        log.warning("%s names no config groups (a run from before they were saved): the record names this "
                    "command's data/model/embedding options", schema)
        return
    node = HydraConfig.get().runtime.choices
    with read_write(node), open_dict(node):
        for group, choice in choices.items():
            node[group] = choice


def continue_command() -> str:
    """The command that continues this run: the one that started it (same overrides, so the same
    run directory; ``ckpt_path=last`` by default picks up its ``last.ckpt``)."""
    return shlex.join(["mlet-train", *sys.argv[1:]])
