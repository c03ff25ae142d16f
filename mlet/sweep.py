"""Sweeps that can be interrupted and started again.

* Deterministic job directories: a sweep job's output directory is named by what the job is,
  ``<data>-<model>-<embedding>-d<dim>[-<arm keys>]-s<seed>[-<hash>]`` (``hydra.sweep.subdir:
  ${mlet.job_dir:}``; MLET: ``...-d16-k64-s0``), so a restarted sweep finds its earlier jobs.
  ``<embedding>`` is the config option chosen (``embedding=mlet``), ``<arm keys>`` the keys the
  embedding class declares as defining an arm (``arm_keys``, :mod:`mlet.embeddings.base`). The hash
  (8 hex digits) covers every other override of the job (``optimizer.lr=0.1``,
  ``trainer.max_epochs=1``, ...), so jobs differing in anything else never share a directory. Keys
  a type ignores (``ignored_keys``; single: ``inner_dim``) are in neither: the single-layer jobs of
  a sweep over k are one job, run once.
* Skipping (``skip_reason``, called first thing in ``mlet.job.run``): a job whose directory
  already holds a ``record.json`` is skipped ("skipped: record exists"), unless ``force=true``;
  a job whose record was written by the same job with another value of an ignored key is skipped
  as a duplicate; inside a multirun, a job whose embedding class finds its config invalid
  (``config_problem``: MLET with ``inner_dim < dim``) is skipped as invalid (a single run with it
  still fails with the embedding's error). A job whose ``embedding.budget`` chooses the same knob as
  another budget's finished job (``same_model_as``: asked once the embedding is built) is skipped as
  a duplicate of it; when that job is still training (a parallel launcher), this one waits for it.
* A job that fails inside a multirun does not stop the sweep: its error is logged (with the
  traceback when it is not a config or input error), the outcome ``failed`` is noted, and the
  other jobs go on. Its ``record.json`` says ``status: failed`` (mlet.train): started again, the
  sweep retrains it.
* Every job's outcome (trained / exists / duplicate / invalid / running / failed) is appended to
  ``<sweep dir>/sweep_jobs.jsonl``; the Hydra callback :class:`SweepSummary` logs the counts when
  the multirun ends, names the failed jobs, and ends the process with exit status 1 if any failed.
* wandb naming: ``${mlet.run_name:}`` (the job name without the hash), ``${mlet.sweep_group:}``
  (the sweep directory's name in a multirun, else null) and ``${mlet.run_tags:}`` (``data:...``,
  ``model:...``, ``embedding:...``, ``d:...``, ``k:...`` plus the config's ``tags``).
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import logging
import os
import socket
import time
from collections import Counter
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from mlet.embeddings.base import FieldEmbedding, embedding_class, plain_config
from mlet.records import RECORD_NAME, RunRecord, read_record

log = logging.getLogger("mlet.sweep")

JOBS_LOG = "sweep_jobs.jsonl"
# Overrides that are part of a job's name, or change nothing in its result: kept out of the hash.
# (and embedding.<key> for the arm keys and ignored keys of the job's embedding type: named_keys)
NAMED_KEYS = {"data", "model", "embedding", "embedding.dim", "seed"}
NEUTRAL_KEYS = {"sweep", "force", "tags", "logger", "trainer.enable_progress_bar", "keep_last_checkpoint", "keep_best_checkpoint", "ckpt_path"}
NEUTRAL_PREFIXES = ("hydra.", "logger.", "paths.", "callbacks.progress_log.")
SKIP_MESSAGES = {
    "exists": "record exists",
    "duplicate": "duplicate",
    "invalid": "invalid combination",
    "running": "another process is training it",
}


# ---- what a job is ---------------------------------------------------------------------------
def _hydra_node(root: DictConfig | None) -> DictConfig | None:
    if root is not None and "hydra" in root:
        return root.hydra
    if HydraConfig.initialized():
        return HydraConfig.get()
    return None


def _choice(hydra_node: DictConfig | None, group: str, cfg: DictConfig) -> str:
    if hydra_node is not None:
        choice = OmegaConf.select(hydra_node, f"runtime.choices.{group}", default=None)
        if choice:
            return str(choice)
    if group == "embedding":
        cls, _ = embedding_type(cfg)
        if cls is not None:
            return cls.kind
    target = OmegaConf.select(cfg, f"{group}._target_", default=None)
    return str(target).rsplit(".", 1)[-1] if target else "none"


def embedding_type(cfg: DictConfig) -> tuple[type[FieldEmbedding] | None, dict[str, Any]]:
    """The embedding class the config's ``embedding._target_`` names (None if it names none) and
    the ``embedding`` node as a plain dict (what the class's interface takes)."""
    node = OmegaConf.select(cfg, "embedding", default=None)
    if not isinstance(node, DictConfig):
        return None, {}
    try:
        plain = OmegaConf.to_container(node, resolve=True)
    except Exception:  # noqa: BLE001 - an interpolation that resolves only inside a job
        plain = OmegaConf.to_container(node, resolve=False)
    return embedding_class(plain.get("_target_")), plain_config(plain)


def arm(cfg: DictConfig) -> dict[str, Any]:
    """The arm the config builds, as its embedding class states it (``{"kind", "dim", ...}``);
    kind None and ``dim`` for a target that is no embedding class (the config check names it)."""
    cls, plain = embedding_type(cfg)
    return cls.arm_of(plain) if cls is not None else {"kind": None, "dim": plain.get("dim")}


def identity(cfg: DictConfig) -> dict[str, Any]:
    """The axes a sweep varies: data, model, embedding (the config option chosen), dim, the arm
    keys of its type (MLET: inner_dim; ignored keys left out), seed."""
    node = _hydra_node(cfg)
    axes = {k: v for k, v in arm(cfg).items() if k != "kind"}
    return {
        "data": _choice(node, "data", cfg),
        "model": _choice(node, "model", cfg),
        "embedding": _choice(node, "embedding", cfg),
        **axes,
        "seed": OmegaConf.select(cfg, "seed", default=None),
    }


def _arm_parts(cfg: DictConfig) -> list[tuple[str, Any]]:
    """The arm keys of the job as ``(short name, value)`` (MLET: ``("k", 64)``)."""
    cls, plain = embedding_type(cfg)
    return cls.name_parts(cls.arm_of(plain)) if cls is not None else []


def named_keys(cfg: DictConfig) -> set[str]:
    """Override keys the job's name already says (or that its type ignores): kept out of the hash.
    ``embedding._target_`` is not one of them: a job whose class is swapped by an override gets a hash."""
    cls, _ = embedding_type(cfg)
    keys = (*cls.arm_keys, *cls.ignored_keys) if cls is not None else ()
    return NAMED_KEYS | {f"embedding.{k}" for k in keys}


def override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("~+")


def other_overrides(task_overrides: list[str], named: set[str] = NAMED_KEYS) -> list[str]:
    """The job's overrides that its name does not already say (``named``: :func:`named_keys`) and
    that can change its result."""
    out = []
    for o in task_overrides:
        key = override_key(o)
        if key in named or key in NEUTRAL_KEYS or key.startswith(NEUTRAL_PREFIXES):
            continue
        out.append(o)
    return sorted(out)


def run_name(cfg: DictConfig) -> str:
    ident = identity(cfg)
    parts = [ident["data"], ident["model"], ident["embedding"], f"d{ident['dim']}",
             *(f"{key}{value}" for key, value in _arm_parts(cfg))]
    parts.append(f"s{ident['seed']}")
    return "-".join(str(p) for p in parts)


def job_dir_name(cfg: DictConfig) -> str:
    """``run_name`` plus, when the job has other overrides, a hash of them."""
    node = _hydra_node(cfg)
    overrides = list(OmegaConf.select(node, "overrides.task", default=[]) or []) if node is not None else []
    extra = other_overrides([str(o) for o in overrides], named_keys(cfg))
    name = run_name(cfg)
    if extra:
        name += "-" + hashlib.sha1("\n".join(extra).encode()).hexdigest()[:8]
    return name


def sweep_group() -> str | None:
    """The sweep directory's name inside a multirun (one wandb group per sweep), else None."""
    if not HydraConfig.initialized():
        return None
    hc = HydraConfig.get()
    if hc.mode != RunMode.MULTIRUN:
        return None
    return Path(str(hc.sweep.dir)).name


def run_tags(cfg: DictConfig) -> list[str]:
    ident = identity(cfg)
    tags = [f"data:{ident['data']}", f"model:{ident['model']}", f"embedding:{ident['embedding']}",
            f"d:{ident['dim']}"]
    tags += [f"{key}:{value}" for key, value in _arm_parts(cfg)]
    user = OmegaConf.select(cfg, "tags", default=None) or []
    return tags + [str(t) for t in user if str(t) not in tags]


def launch_dir() -> str:
    """The directory mlet-train was started from: Hydra's ``runtime.cwd`` inside a job, the
    process's working directory before Hydra is set up (the multirun's sweep directory is resolved
    there, where ``${hydra:runtime.cwd}`` fails with "HydraConfig was not set")."""
    if HydraConfig.initialized():
        cwd = OmegaConf.select(HydraConfig.get(), "runtime.cwd", default=None)
        if cwd:
            return str(cwd)
    return os.getcwd()


def register_resolvers() -> None:
    OmegaConf.register_new_resolver("mlet.launch_dir", launch_dir, replace=True)
    OmegaConf.register_new_resolver(
        "mlet.choice", lambda group, *, _root_: _choice(_hydra_node(_root_), str(group), _root_), replace=True
    )
    OmegaConf.register_new_resolver("mlet.job_dir", lambda *, _root_: job_dir_name(_root_), replace=True)
    from mlet.resume import run_dir  # noqa: PLC0415 (mlet.resume imports this module)

    OmegaConf.register_new_resolver("mlet.run_dir", lambda runs, *, _root_: run_dir(str(runs), _root_), replace=True)
    OmegaConf.register_new_resolver("mlet.run_name", lambda *, _root_: run_name(_root_), replace=True)
    OmegaConf.register_new_resolver("mlet.sweep_group", lambda: sweep_group(), replace=True)
    OmegaConf.register_new_resolver("mlet.run_tags", lambda *, _root_: run_tags(_root_), replace=True)
    from mlet.module import selection_metric  # noqa: PLC0415 (the Lightning module: only when configs resolve)

    OmegaConf.register_new_resolver("mlet.selection_metric", lambda quantize: selection_metric(str(quantize)),
                                    replace=True)


# ---- skipping finished, duplicate and invalid jobs ---------------------------------------------
def in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def skip_reason(cfg: DictConfig, output_dir: Path) -> tuple[str, str, RunRecord | None] | None:
    """``(status, reason, existing record or None)`` when the job should not train, else None.

    Cheap: reads the config and at most one ``record.json``; builds nothing.
    """
    cls, plain = embedding_type(cfg)
    problem = cls.config_problem(plain) if cls is not None and in_multirun() else None
    if problem:
        return "invalid", f"invalid: {problem}", None
    path = output_dir / RECORD_NAME
    if cfg.get("force", False) or not path.is_file():
        return None
    try:
        existing = read_record(path)
    except (ValueError, OSError) as exc:
        log.warning("retraining: %s is unreadable (%s)", path, exc)
        return None
    if existing.failed:
        log.info("retraining: %s records a failed run (%s)", path, existing.error)
        return None
    for key in cls.ignored_keys if cls is not None else ():
        old = existing.config_value(f"embedding.{key}")
        if old != plain.get(key):
            return ("duplicate", f"duplicate: embedding={cls.kind} ignores embedding.{key}; the same job ran "
                    f"with {key}={old} and its record exists: {path}", existing)
    return "exists", f"record exists: {path} (force=true retrains)", existing


def same_model_as(cfg: DictConfig, output_dir: Path, built: dict[str, Any]) -> tuple[str, RunRecord] | None:
    """``(reason, record)`` of a finished job of this sweep that trained the very model this job would.

    A type that chooses its knob from ``embedding.budget`` can resolve two budgets to the same knob
    (mixed dimensions bottom out at one column per row; QR at its fewest remainder rows): the jobs
    then differ only in the budget they asked for. ``built`` is this job's arm once built (budget
    and the knob it chose); a sibling job directory whose name differs from this one's only in the
    budget part (same data, model, type, d, other arm keys, seed and override hash) and whose record
    holds the same arm but for the budget is that model. Asked after the embedding is built (the
    knob needs the data's cardinalities); in a multirun only, where the siblings are one sweep's.
    A sibling still training that model (its lock announces the arm, ``announce_arm``, earlier than
    this job's) is waited for: with a parallel launcher the two budgets' jobs can run at once.
    """
    budget = built.get("budget")
    cls, _ = embedding_type(cfg)
    if budget is None or cls is None or not in_multirun():
        return None

    def budget_part(value: Any) -> str:
        (part,) = [f"{key}{v}" for key, v in cls.name_parts({"budget": value})]
        return f"-{part}-"

    # only the directories named as this job but for the budget: their names say so, no record read
    pattern = glob.escape(output_dir.name).replace(budget_part(budget), budget_part("*"), 1)
    resolved = _json_value({k: v for k, v in built.items() if k != "budget"})

    def same_arm(arm: dict[str, Any], path: Path) -> bool:
        theirs = arm.get("budget")
        return theirs is not None and theirs != budget and \
            path.name == output_dir.name.replace(budget_part(budget), budget_part(theirs), 1) and \
            _json_value({k: v for k, v in arm.items() if k != "budget"}) == resolved

    mine, waiting_for = announce_arm(output_dir, built), None
    while True:
        training = None
        for sibling in sorted(output_dir.parent.glob(pattern)):
            if sibling == output_dir:
                continue
            try:
                other = read_record(sibling / RECORD_NAME) if (sibling / RECORD_NAME).is_file() else None
            except (ValueError, OSError):
                other = None
            if other is not None and not other.failed and same_arm(other.arm, sibling):
                chosen = ", ".join(f"{k}={v}" for k, v in resolved.items() if k not in ("kind", "dim"))
                return (f"duplicate: embedding.budget={budget} chooses {chosen}, as budget={other.arm['budget']} "
                        f"did; that job trained this model: {sibling / RECORD_NAME}"), other
            holder = _lock_holder(sibling)
            # a sibling that announced the same model before this job did is training it now (two jobs
            # of a parallel launcher): wait for its record rather than train the model twice
            if holder is not None and isinstance(holder.get("arm"), dict) and same_arm(holder["arm"], sibling) \
                    and (holder.get("announced", 0.0), sibling.name) < (mine, output_dir.name):
                training = sibling
        if training is None:
            return None
        if training != waiting_for:
            log.info("job %s: waiting for %s, which builds the same model and is training it (delete its %s if "
                     "that run is gone)", output_dir.name, training.name, LOCK_NAME)
            waiting_for = training
        time.sleep(WAIT_SECONDS)


WAIT_SECONDS = 10.0  # how often a job waiting for a sibling's record looks again


def _json_value(value: Any) -> Any:
    """``value`` as it reads back from JSON (records and lock files hold arms as JSON)."""
    return json.loads(json.dumps(value, default=str))


def _lock_holder(job_dir: Path) -> dict[str, Any] | None:
    """What the lock of ``job_dir`` says while a live process holds it (None: no lock, or its process
    on this host is gone)."""
    try:
        holder = json.loads((job_dir / LOCK_NAME).read_text() or "{}")
    except (OSError, ValueError):
        return None
    return None if _stale(holder) else holder


def announce_arm(output_dir: Path, built: dict[str, Any]) -> float:
    """Write the model this job has built into its lock (``<dir>/.running``) and return the time of
    that announcement: a sibling budget job that builds the same model later waits for this job's
    record (``same_model_as``) instead of training it at the same time. Without a lock (a job not
    run by ``mlet.job.run``) nothing is written."""
    now = time.time()
    lock = output_dir / LOCK_NAME
    try:
        holder = json.loads(lock.read_text() or "{}")
    except (OSError, ValueError):
        return now
    tmp = lock.with_name(f"{LOCK_NAME}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({**holder, "arm": _json_value(built), "announced": now}))
    os.replace(tmp, lock)  # the lock stays held throughout: replaced in one step, never absent
    return now


LOCK_NAME = ".running"


def process_rank() -> int:
    """This process's global rank, as Lightning reads it from the environment (``RANK``,
    ``LOCAL_RANK``, ... set by Lightning's DDP launcher, torchrun or SLURM); 0 outside DDP."""
    from pytorch_lightning.utilities.rank_zero import rank_zero_only

    return int(getattr(rank_zero_only, "rank", 0) or 0)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stale(holder: dict[str, Any]) -> bool:
    """A lock's holder is a process of this host that is gone."""
    return holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int) and \
        not _alive(holder["pid"])


@contextlib.contextmanager
def job_lock(output_dir: Path):
    """Yields ``None`` when this process holds the job directory, else why it may not.

    A job directory is held through ``<dir>/.running`` (created exclusively, holding host and pid),
    so two sweeps started on the same output root never train the same job at once or write over
    each other's records. A lock left by a dead process of this host is taken over. Under DDP only
    rank 0 takes it (``mlet.job.run``): the ranks it starts run its job inside its lock.
    """
    output_dir.mkdir(parents=True, exist_ok=True)
    lock = output_dir / LOCK_NAME
    me = {"host": socket.gethostname(), "pid": os.getpid(), "time": time.time()}
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                holder = json.loads(lock.read_text() or "{}")
            except (OSError, ValueError):
                holder = {}
            if _stale(holder):
                lock.unlink(missing_ok=True)  # stale: its process is gone
                continue
            yield (f"running elsewhere: {output_dir} is held by pid {holder.get('pid')} on "
                   f"{holder.get('host')} ({lock}; delete it if that run is gone)")
            return
        with os.fdopen(fd, "w") as fh:
            json.dump(me, fh)
        try:
            yield None
        finally:
            lock.unlink(missing_ok=True)
        return
    yield f"could not take {lock}"


def note_outcome(output_dir: Path, status: str, reason: str | None = None) -> None:
    """Log a skipped job, and in a multirun append the outcome to ``<sweep dir>/sweep_jobs.jsonl``."""
    if status not in ("trained", "failed"):
        log.info("skipped: %s", reason or status)
    if not in_multirun():
        return
    sweep_dir = Path(str(HydraConfig.get().sweep.dir))
    line = json.dumps({"time": time.time(), "job": output_dir.name, "status": status, "reason": reason})
    sweep_dir.mkdir(parents=True, exist_ok=True)
    with open(sweep_dir / JOBS_LOG, "a") as fh:
        fh.write(line + "\n")


def read_outcomes(sweep_dir: Path, since: float = 0.0) -> list[dict[str, Any]]:
    """The outcome lines of ``<sweep dir>/sweep_jobs.jsonl`` written at or after ``since``."""
    path = Path(sweep_dir) / JOBS_LOG
    if not path.is_file():
        return []
    entries = []
    for line in path.read_text().splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if entry.get("time", 0) >= since:
            entries.append(entry)
    return entries


class SweepSummary(Callback):
    """Hydra callback: logs how many jobs of the multirun trained, were skipped (why) or failed;
    a sweep with failed jobs ends with exit status 1 once every other job has run."""

    def __init__(self) -> None:
        self.started = time.time()

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.started = time.time()

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        outcomes = read_outcomes(sweep_dir, self.started)
        counts = Counter(e["status"] for e in outcomes)
        parts = [f"{counts.get('trained', 0)} trained"]
        for status in SKIP_MESSAGES:
            if counts.get(status):
                parts.append(f"{counts[status]} skipped ({SKIP_MESSAGES[status]})")
        failed = [e for e in outcomes if e["status"] == "failed"]
        if failed:
            parts.append(f"{len(failed)} failed")
        log.info("sweep summary: %d jobs: %s; outcomes in %s", len(outcomes), ", ".join(parts), sweep_dir / JOBS_LOG)
        if failed:
            for entry in failed:
                log.error("failed: %s: %s", entry["job"], entry.get("reason"))
            log.error("%d job(s) failed; start the same sweep again to retrain only them", len(failed))
            raise SystemExit(1)
