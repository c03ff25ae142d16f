"""Checks a composed config before any work is done.

The schema of every config group is the signature of the class its ``_target_`` names, so there
is one place that says what a group accepts. ``check_config`` reports, as one line naming the key:

* a key the target does not accept (e.g. a ``+embedding.dimm=4`` typo);
* a value whose type contradicts the parameter's annotation (``embedding.dim=abc``);
* a value out of range, found by building the embedding and the model once on a two-field toy
  schema (their constructors validate), so a bad ``embedding.inner_dim`` fails in a second, not
  after a dataset has been prepared.
"""

from __future__ import annotations

import inspect
import typing
from typing import Any

from hydra.utils import get_class, get_method, instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf

from mlet.errors import MletError


class ConfigError(MletError, ValueError):
    """A config value that cannot work; the message names the key."""


_SCALARS = {int: (int,), float: (int, float), bool: (bool,), str: (str,)}


def _target(path: str):
    try:
        return get_class(path)
    except Exception:  # noqa: BLE001 - functions are targets too
        return get_method(path)


def _accepts(annotation: Any, value: Any) -> bool:
    if annotation is inspect.Parameter.empty or annotation is Any or value is None:
        return True
    if isinstance(annotation, str):  # postponed annotations: check the plain scalar ones only
        annotation = {"int": int, "float": float, "bool": bool, "str": str}.get(annotation, Any)
        if annotation is Any:
            return True
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", typing.Union)):
        return any(_accepts(a, value) for a in typing.get_args(annotation))
    if annotation in _SCALARS:
        if isinstance(value, bool) and annotation is not bool:
            return False
        return isinstance(value, _SCALARS[annotation])
    if origin in (list, tuple) or annotation in (list, tuple):
        return isinstance(value, (list, tuple, ListConfig))
    return True


def check_node(key: str, node: DictConfig) -> None:
    """Keys and types of one ``_target_`` node against the target's signature."""
    target_path = node.get("_target_")
    try:
        target = _target(target_path)
    except Exception as exc:  # noqa: BLE001
        raise ConfigError(f"{key}._target_: cannot import {target_path!r} ({exc})") from exc
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):
        return
    params = signature.parameters
    open_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    hints: dict[str, Any] = {}
    try:
        hints = typing.get_type_hints(target.__init__ if inspect.isclass(target) else target)
    except Exception:  # noqa: BLE001 - unresolvable hints: fall back to raw annotations
        hints = {}
    for name in node:
        if str(name).startswith("_"):
            continue
        if name not in params:
            if open_kwargs:
                continue
            allowed = ", ".join(p for p in params if p not in ("self", "args", "kwargs"))
            raise ConfigError(f"{key}.{name}: not a setting of {target_path} (allowed: {allowed})")
        value = OmegaConf.to_container(node, resolve=True)[name] if OmegaConf.is_config(node) else node[name]
        annotation = hints.get(name, params[name].annotation)
        if not _accepts(annotation, value):
            raise ConfigError(f"{key}.{name}={value!r}: expected {getattr(annotation, '__name__', annotation)}")


def check_config(
    cfg: DictConfig,
    groups: tuple[str, ...] = ("data", "datamodule", "embedding", "model", "optimizer", "lr_scheduler", "trainer"),
) -> None:
    for group in groups:
        node = cfg.get(group)
        if isinstance(node, DictConfig) and "_target_" in node:
            check_node(group, node)
    for group in ("callbacks", "logger"):
        node = cfg.get(group)
        if isinstance(node, DictConfig):
            for name, sub in node.items():
                if isinstance(sub, DictConfig) and "_target_" in sub:
                    check_node(f"{group}.{name}", sub)
    if cfg.get("keep_last_checkpoint", "auto") not in ("auto", True, False):
        raise ConfigError(f"keep_last_checkpoint={cfg.keep_last_checkpoint!r}: expected auto, true or false")
    if cfg.get("keep_best_checkpoint", True) not in (True, False):
        raise ConfigError(f"keep_best_checkpoint={cfg.keep_best_checkpoint!r}: expected true or false")
    # ranges: build the embedding and the model once on a toy two-field schema
    try:
        from mlet.module import CTRModule, init_model_  # noqa: PLC0415 - only needed here

        # a per-table sharding names fields of the real schema: its values are checked here, its
        # field indices once the data's fields are known
        toy = {}
        if cfg.embedding.get("table_sharding") is not None:
            from mlet.embeddings.torchrec import check_backend  # noqa: PLC0415

            check_backend(cfg.embedding.get("backend", "native"), cfg.embedding.get("sharding", "auto"),
                          cfg.embedding.table_sharding)
            toy["table_sharding"] = None
        embedding = instantiate(cfg.embedding)(cardinalities=[2, 3], **toy)
        model = instantiate(cfg.model)(num_fields=2, embed_dim=embedding.dim, num_dense=1)
        init_model_(model, cfg.get("model_init", "default"))
        CTRModule(embedding, model, embedding_l2=cfg.get("embedding_l2", 0.0))
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
