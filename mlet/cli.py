"""How every ``mlet-*`` console script starts and ends.

* Configs: the Hydra commands (``mlet-train``, ``mlet-prepare``) compose from the package
  ``mlet.conf`` (:data:`CONFIG_PATH`), shipped with mlet, so they work from any directory and from a
  non-editable install.
* Errors, one policy for all commands: a user error (:class:`mlet.errors.MletError`, a file that
  cannot be read, a missing or unknown config key or option, a bad value a config-built object
  rejects) prints one line ``mlet-<command>: error: <message>`` on stderr and exits with status 2.
  Anything else is a bug: its traceback, exit status 1. ``HYDRA_FULL_ERROR=1`` shows the
  traceback of a user error too.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Any, NoReturn

from hydra.errors import CompactHydraException, InstantiationException, MissingConfigException, OverrideParseException
from omegaconf import DictConfig
from omegaconf.errors import MissingMandatoryValue

from mlet.errors import MletError

CONFIG_PATH = "pkg://mlet.conf"

# A training run that diverges (non-finite loss, mlet.module) is fixed in the config (optimizer.lr).
USER_ERRORS = (MletError, OSError, FloatingPointError, MissingMandatoryValue)
# Set by the first mlet command of a process tree: whether the user asked for Hydra's full errors.
_USER_FULL_ERROR = "MLET_USER_HYDRA_FULL_ERROR"


def root_cause(exc: BaseException) -> BaseException:
    """The error behind Hydra's ``InstantiationException`` wrappers (a constructor's own error)."""
    while isinstance(exc, InstantiationException) and exc.__cause__ is not None:
        exc = exc.__cause__
    return exc


def _keys(node: Any) -> list[str]:
    if not isinstance(node, (dict, DictConfig)):
        return []
    return sorted(str(k) for k in node.keys() if not str(k).startswith("_") and k != "hydra")


def _composition_message(exc: CompactHydraException) -> str:
    """Hydra's multi-line composition error as one line, with the valid choices."""
    if isinstance(exc, MissingConfigException) and exc.options is not None and exc.missing_cfg_file:
        group, _, option = str(exc.missing_cfg_file).rpartition("/")
        return f"{group}={option}: no such option; {group} is one of: {', '.join(exc.options)}"
    if isinstance(exc, OverrideParseException):
        return f"{exc.override}: {str(exc).splitlines()[0]} (see https://hydra.cc/docs/advanced/override_grammar/basic)"
    cause = exc.__cause__
    full_key = getattr(cause, "full_key", None)
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    lines = lines[: next((i for i, line in enumerate(lines) if line.startswith("Config search path")), len(lines))]
    if full_key and getattr(cause, "parent_node", None) is not None:
        parent = full_key.rpartition(".")[0]
        hint = next((line for line in lines if line.startswith("To append")), "")
        return (f"{full_key}: no such key; {parent or 'the config'} has: {', '.join(_keys(cause.parent_node))}"
                + (f" ({hint[0].lower()}{hint[1:]})" if hint else ""))
    return "; ".join(line for line in lines if not line.startswith("See https://hydra.cc"))


def user_message(exc: BaseException) -> str | None:
    """The one-line message of a user error; ``None`` for a bug."""
    if isinstance(exc, CompactHydraException) and not isinstance(exc, InstantiationException):
        return _composition_message(exc)  # composing the config: unknown key, option, bad override
    cause = root_cause(exc)
    if isinstance(cause, MissingMandatoryValue):
        key = getattr(cause, "full_key", None) or "a key"
        return f"{key}: missing mandatory value; set it on the command line ({key}=...)"
    if isinstance(cause, USER_ERRORS):
        return str(cause)
    if isinstance(exc, InstantiationException) and isinstance(cause, (ValueError, TypeError)):
        return str(cause)  # a config-built object rejected one of its settings
    return None


def fail(prog: str, message: str) -> NoReturn:
    print(f"{prog}: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def call(prog: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run a command's body under the error policy (module docstring)."""
    try:
        return fn(*args, **kwargs)
    except Exception as exc:
        message = user_message(exc)
        if message is None or os.environ.get(_USER_FULL_ERROR) == "1":
            raise
        fail(prog, message)


def command(prog: str, body: Callable[..., int], *args: Any) -> int:
    """An argparse command's ``main``: ``body``'s exit status; a user error prints one line and gives 2."""
    try:
        return body(*args)
    except Exception as exc:
        message = user_message(exc)
        if message is None or os.environ.get(_USER_FULL_ERROR) == "1":
            raise
        print(f"{prog}: error: {message}", file=sys.stderr)
        return 2


def hydra_app(prog: str, config_name: str) -> Callable[[Callable[[DictConfig], Any]], Callable[[], Any]]:
    """``hydra.main`` on the packaged configs, under the error policy: the console script's ``main``.

    Hydra prints its own errors (several lines, exit status 1) unless ``HYDRA_FULL_ERROR=1``;
    with it set, they reach :func:`call`, which reduces composition errors to one line.
    """
    import hydra

    def decorate(task: Callable[[DictConfig], Any]) -> Callable[[], Any]:
        @functools.wraps(task)  # Hydra names the job (and its log file) after the unwrapped task
        def guarded(cfg: DictConfig) -> Any:
            return call(prog, task, cfg)  # a user error ends here, before Hydra reports a failed job

        app = hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name=config_name)(guarded)

        @functools.wraps(task)
        def main() -> Any:
            os.environ.setdefault(_USER_FULL_ERROR, "1" if os.environ.get("HYDRA_FULL_ERROR") == "1" else "0")
            os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra raises instead of printing (hydra._internal.utils.run_and_report)
            return call(prog, app)

        main.hydra_task = task  # type: ignore[attr-defined]
        return main

    return decorate
