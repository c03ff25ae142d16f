"""Sparse-aware optimisation: the embedding tables get row-sparse gradients and an optimiser that
reads and writes only the rows a batch touched; every other parameter gets a dense optimiser.

``conf/optimizer/*.yaml`` instantiates a :class:`SparseAwareOptimizer`: a ``dense`` optimiser
factory (a Hydra ``_partial_``), an optional ``sparse`` one for the embedding's
``sparse_parameters()`` (the large tables: single-layer ``W``, MLET ``A``; MLET's ``B`` is dense),
and one ``lr`` for both. The embedding's ``sparse`` flag follows from it (``sparse_gradients``):
:class:`mlet.module.CTRModule` sets it, so a user chooses one thing, the optimiser.

Torch has no optimiser that takes both kinds of gradient for Adam (``SparseAdam`` refuses dense
gradients, ``Adam`` sparse ones), and Lightning's automatic optimisation steps one optimiser per
batch (several need manual optimisation, which also counts ``global_step`` once per optimiser).
:class:`CombinedOptimizer` therefore presents several torch optimisers as one: Lightning, LR
schedulers and checkpoints see a single optimiser. ``SGD`` and ``Adagrad`` accept sparse and dense
gradients in one instance, so when ``sparse`` and ``dense`` name the same optimiser with the same
arguments, one torch optimiser with two parameter groups is built and no wrapper is needed.

What each sparse-capable optimiser does to rows a batch did not touch:

* ``SGD`` (no momentum, no weight decay) and ``Adagrad`` (no weight decay): nothing, exactly as the
  dense update (their gradient there is zero), so the sparse path is the same algorithm, faster.
* ``SparseAdam``: "lazy Adam": the moments of untouched rows are neither decayed nor applied, so
  it is a different (and for embeddings usual) algorithm than dense ``Adam``, which keeps moving
  every row with its decaying momentum.
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer

OptimizerFactory = Callable[..., Optimizer]


class CombinedOptimizer(Optimizer):
    """Several torch optimisers (over disjoint parameters) stepped as one.

    ``param_groups`` is the concatenation of the children's groups (the same dicts: a scheduler
    changing ``lr`` changes the child), ``state`` a merged view of the children's states,
    ``state_dict`` the list of the children's. ``step(closure)`` evaluates the closure once, then
    steps every child.
    """

    def __init__(self, optimizers: Sequence[Optimizer]) -> None:
        optimizers = list(optimizers)
        if not optimizers or not all(isinstance(o, Optimizer) for o in optimizers):
            raise ValueError("CombinedOptimizer needs at least one torch.optim.Optimizer")
        seen: set[int] = set()
        for opt in optimizers:
            for group in opt.param_groups:
                for p in group["params"]:
                    if id(p) in seen:
                        raise ValueError("CombinedOptimizer: a parameter belongs to two optimizers")
                    seen.add(id(p))
        self.optimizers = optimizers
        # Optimizer.__init__ would register parameters of its own; set up only what its methods
        # (hooks, repr, profiling of step) rely on.
        self.defaults: dict[str, Any] = {}
        self.param_groups = [g for opt in optimizers for g in opt.param_groups]
        for name in (
            "_optimizer_step_pre_hooks", "_optimizer_step_post_hooks",
            "_optimizer_state_dict_pre_hooks", "_optimizer_state_dict_post_hooks",
            "_optimizer_load_state_dict_pre_hooks", "_optimizer_load_state_dict_post_hooks",
        ):
            setattr(self, name, OrderedDict())
        self._warned_capturable_if_run_uncaptured = True
        self._patch_step_function()

    @property
    def state(self) -> dict[torch.Tensor, Any]:  # type: ignore[override]
        """Per-parameter state of every child (the children's own dicts, so in-place edits stick)."""
        return {p: s for opt in self.optimizers for p, s in opt.state.items()}

    def __getstate__(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def __repr__(self) -> str:
        inner = ",\n".join("  " + repr(o).replace("\n", "\n  ") for o in self.optimizers)
        return f"CombinedOptimizer(\n{inner}\n)"

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for opt in self.optimizers:
            opt.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        raise NotImplementedError("CombinedOptimizer: add the parameter group to one of .optimizers")

    def state_dict(self) -> dict[str, Any]:
        return {"optimizers": [opt.state_dict() for opt in self.optimizers]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        states = state_dict.get("optimizers")
        if states is None or len(states) != len(self.optimizers):
            raise ValueError(
                f"CombinedOptimizer: the state holds {len(states) if states is not None else 'no'} optimizers, "
                f"this one has {len(self.optimizers)} (was the checkpoint written with another optimizer config?)"
            )
        for opt, state in zip(self.optimizers, states):
            opt.load_state_dict(state)


def _name(factory: OptimizerFactory) -> str:
    func = factory.func if isinstance(factory, functools.partial) else factory
    return getattr(func, "__name__", repr(func))


def _same(a: OptimizerFactory, b: OptimizerFactory) -> bool:
    if isinstance(a, functools.partial) and isinstance(b, functools.partial):
        return a.func is b.func and a.args == b.args and a.keywords == b.keywords
    return a is b


class SparseAwareOptimizer:
    """What ``conf/optimizer`` builds: one optimiser per kind of parameter.

    Args:
        dense: ``params -> Optimizer`` for every parameter with a dense gradient (Hydra ``_partial_``).
        sparse: ``params -> Optimizer`` for the embedding's ``sparse_parameters()``, which then get
            row-sparse gradients; it must accept sparse gradients (``SparseAdam``, ``SGD``,
            ``Adagrad``). ``None``: the tables are dense parameters like the rest.
        lr: learning rate given to both (an ``lr`` set inside ``dense``/``sparse`` wins).
        table_lr_scale: multiplies the learning rate of the embedding tables (single-layer ``W``,
            MLET ``A``) only. The "effective learning rate matched" single-layer control sets it to
            the factor MLET's initial ``B^T B`` implies (``k * std_B^2``: ``k / 16`` with the authors'
            init, 1 with ``init=scaled``), so a single-layer table learns at MLET's initial rate.
    """

    def __init__(self, dense: OptimizerFactory, sparse: OptimizerFactory | None = None, lr: float | None = None,
                 table_lr_scale: float = 1.0):
        if not callable(dense) or (sparse is not None and not callable(sparse)):
            raise ValueError("optimizer.dense (and optimizer.sparse, when set) must be optimizer factories")
        if lr is not None and not lr > 0:
            raise ValueError(f"optimizer.lr must be positive, got {lr!r}")
        if not table_lr_scale > 0:
            raise ValueError(f"optimizer.table_lr_scale must be positive, got {table_lr_scale!r}")
        self.dense = dense
        self.sparse = sparse
        self.lr = lr
        self.table_lr_scale = float(table_lr_scale)

    @property
    def sparse_gradients(self) -> bool:
        """Whether the embedding tables should produce sparse gradients."""
        return self.sparse is not None

    def _kwargs(self, factory: OptimizerFactory) -> dict[str, Any]:
        given = factory.keywords if isinstance(factory, functools.partial) else {}
        return {"lr": self.lr} if self.lr is not None and "lr" not in given else {}

    def _table_group(self, factory: OptimizerFactory, params: list[nn.Parameter]) -> dict[str, Any]:
        group: dict[str, Any] = {"params": params}
        if self.table_lr_scale != 1.0:
            given = factory.keywords if isinstance(factory, functools.partial) else {}
            base = given.get("lr", self.lr)
            if base is None:
                raise ValueError("optimizer.table_lr_scale needs optimizer.lr to be set")
            group["lr"] = base * self.table_lr_scale
        return group

    def build(self, dense_params: Iterable[nn.Parameter], sparse_params: Iterable[nn.Parameter] = (),
              sparsify: bool = False) -> Optimizer:
        """The optimiser for ``dense_params`` and the embedding tables ``sparse_params`` (row-sparse
        gradients when there is a ``sparse`` factory, else dense like the rest). ``sparsify``: the
        tables' gradients arrive dense (TorchRec's dense kernel, through each table's ``grad_source``) and
        the ``sparse`` optimiser gets their non-zero rows (:func:`_table_gradient_hooks`)."""
        dense_params, tables = list(dense_params), list(sparse_params)
        if not tables:
            return self.dense(dense_params, **self._kwargs(self.dense))
        if self.sparse is None or _same(self.dense, self.sparse):
            # one optimiser (dense Adam; or SGD/Adagrad, which take both kinds of gradient), tables in their own group
            groups = ([{"params": dense_params}] if dense_params else []) + [self._table_group(self.dense, tables)]
            optimizer = self.dense(groups, **self._kwargs(self.dense))
            if not sparsify:
                return optimizer
            _table_gradient_hooks(optimizer, sparse=False)
            return CombinedOptimizer([optimizer])  # runs the closure (backward) before the hooks
        table_opt = self.sparse([self._table_group(self.sparse, tables)], **self._kwargs(self.sparse))
        if sparsify:
            _table_gradient_hooks(table_opt, sparse=True)
        if not dense_params and not sparsify:
            return table_opt
        # a CombinedOptimizer runs the closure (backward) before any step, so the hooks see the gradients
        return CombinedOptimizer(([self.dense(dense_params, **self._kwargs(self.dense))] if dense_params else []) + [table_opt])

    def __call__(self, params: Iterable[nn.Parameter]) -> Optimizer:
        """All ``params`` dense (the plain ``_partial_`` optimiser interface)."""
        return self.build(params)

    def __repr__(self) -> str:
        sparse = _name(self.sparse) if self.sparse is not None else None
        scale = f", table_lr_scale={self.table_lr_scale:g}" if self.table_lr_scale != 1.0 else ""
        return f"SparseAwareOptimizer(dense={_name(self.dense)}, sparse={sparse}, lr={self.lr}{scale})"


@torch.no_grad()
def _table_gradient_hooks(optimizer: Optimizer, sparse: bool) -> None:
    """Step hooks for tables whose gradient arrives dense (``sparsify``, TorchRec's dense kernel).

    Before the step, each parameter with a ``grad_source`` (a tensor sharing its storage, whose
    gradient autograd fills: TorchRec's per-table view of its kernel's weights) takes that gradient;
    with ``sparse`` the table optimiser gets the rows of it that are not zero, as a row-sparse
    gradient: the rows the batch touched, so ``SparseAdam`` and ``RowWiseAdagrad`` step exactly the
    rows they step on the native backend. After the step the gradients go, the source's too (it is in
    no optimiser, so no ``zero_grad`` clears it)."""

    def with_source(opt: Optimizer):
        return [p for group in opt.param_groups for p in group["params"] if getattr(p, "grad_source", None) is not None]

    def before(opt: Optimizer, *_: Any) -> None:
        for p in with_source(opt):
            grad = p.grad_source.grad
            if grad is not None:
                p.grad = grad.to_sparse(sparse_dim=1) if sparse else grad

    def after(opt: Optimizer, *_: Any) -> None:
        for p in with_source(opt):  # no optimiser holds the source: its gradient must not accumulate
            p.grad_source.grad = None
            p.grad = None

    optimizer.register_step_pre_hook(before)
    optimizer.register_step_post_hook(after)


def clip_gradients_(params: Iterable[nn.Parameter], clip_val: float, algorithm: str = "norm") -> torch.Tensor | None:
    """Clip the gradients of ``params`` in place, sparse (row-sparse tables) and dense alike.

    ``norm``: scale every gradient by ``clip_val / (total_norm + 1e-6)`` when that is below 1, with
    ``total_norm`` the 2-norm of all gradients together, as ``torch.nn.utils.clip_grad_norm_``
    does (which refuses sparse gradients); returns ``total_norm``. A sparse gradient is coalesced
    first (repeated rows summed), so its norm is that of the dense gradient it stands for.
    ``value``: clamp every entry to ``[-clip_val, clip_val]``.
    """
    if algorithm not in ("norm", "value"):
        raise ValueError(f"trainer.gradient_clip_algorithm must be norm or value, got {algorithm!r}")
    with_grad = [p for p in params if p.grad is not None]
    for p in with_grad:
        if p.grad.is_sparse:
            p.grad = p.grad.coalesce()
    if algorithm == "value":
        for p in with_grad:
            (p.grad.values() if p.grad.is_sparse else p.grad).clamp_(-clip_val, clip_val)
        return None
    if not with_grad:
        return torch.tensor(0.0)
    grads = [p.grad.values() if p.grad.is_sparse else p.grad for p in with_grad]
    total = torch.nn.utils.get_total_norm(grads, norm_type=2.0)
    coef = torch.clamp(clip_val / (total + 1e-6), max=1.0)
    for g in grads:  # a coalesced sparse gradient's values() is its storage: scaled in place
        g.mul_(coef.to(g.device))
    return total


class RowWiseAdagrad(Optimizer):
    """Row-wise Adagrad: one accumulator per table row (the mean of its squared gradient entries)
    instead of one per entry, so its state is ``n`` floats for an ``n x k`` table, not ``n x k``.

    ``state += mean_j(g_rj^2)``; ``w_r -= lr * g_r / (sqrt(state_r) + eps)``: FBGEMM's
    ``EXACT_ROWWISE_ADAGRAD``, the usual choice for production embedding tables (TorchRec backend:
    fused into backward), here as a torch optimiser for the native backend. Takes sparse row
    gradients (a row absent from the batch is untouched, as under the dense update, where its
    gradient is zero) and dense ones; a parameter of fewer than two dimensions counts as one row.
    """

    def __init__(self, params, lr: float = 0.01, eps: float = 1e-8) -> None:
        if not lr > 0:
            raise ValueError(f"optimizer.lr must be positive, got {lr!r}")
        super().__init__(params, {"lr": lr, "eps": eps})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                rows2d = p.view(p.shape[0], -1) if p.dim() >= 2 else p.view(1, -1)
                state = self.state[p]
                if "sum" not in state:
                    state["sum"] = torch.zeros(rows2d.shape[0], dtype=p.dtype, device=p.device)
                acc = state["sum"]
                if p.grad.is_sparse:
                    grad = p.grad.coalesce()
                    rows, values = grad.indices()[0], grad.values().reshape(len(grad.indices()[0]), -1)
                    acc.index_add_(0, rows, values.pow(2).mean(1))
                    scale = group["lr"] / (acc[rows].sqrt() + group["eps"])
                    rows2d.index_add_(0, rows, -values * scale[:, None])
                else:
                    grad = p.grad.view(rows2d.shape)
                    acc.add_(grad.pow(2).mean(1))
                    rows2d.add_(-grad * (group["lr"] / (acc.sqrt() + group["eps"]))[:, None])
        return loss


def _factory_func(factory: OptimizerFactory | None):
    return factory.func if isinstance(factory, functools.partial) else factory


def fused_table_optimizer(optimizer: Any, device_type: str = "cuda") -> dict[str, Any] | None:
    """FBGEMM's ``fused_params`` for the tables' optimiser (TorchRec backend), from what
    ``conf/optimizer`` built: the table optimiser (``sparse``, else ``dense``) becomes its fused
    FBGEMM counterpart, with the tables' learning rate (``lr * table_lr_scale``).

    ``SGD`` -> ``EXACT_SGD``; ``Adagrad`` -> ``EXACT_ADAGRAD``; :class:`RowWiseAdagrad` ->
    ``EXACT_ROWWISE_ADAGRAD``; ``SparseAdam`` / ``Adam`` -> ``ADAM`` (FBGEMM's Adam updates only the
    rows a batch touched, with a global step count: ``SparseAdam``'s lazy algorithm; under
    ``optimizer=adam`` the tables' update thus differs from native dense Adam's). Anything else is
    a one-line error naming the key.

    FBGEMM's CPU kernels have no Adam: on ``device_type="cpu"`` the Adam family returns None, and
    the strategy shards those tables with TorchRec's dense kernel instead, their optimiser the
    ``optimizer=`` group's own, run in torch (``SparseAwareOptimizer.build(..., sparsify=True)``).
    """
    from fbgemm_gpu.split_embedding_configs import EmbOptimType

    from mlet.errors import MletError

    if not isinstance(optimizer, SparseAwareOptimizer):
        raise MletError("embedding.backend=torchrec needs an optimizer from conf/optimizer (a SparseAwareOptimizer)")
    factory = optimizer.sparse if optimizer.sparse is not None else optimizer.dense
    func = _factory_func(factory)
    given = dict(factory.keywords) if isinstance(factory, functools.partial) else {}
    lr = given.get("lr", optimizer.lr)
    if lr is None:
        raise MletError("embedding.backend=torchrec needs optimizer.lr (the fused table optimiser's learning rate)")
    params: dict[str, Any] = {"learning_rate": float(lr) * optimizer.table_lr_scale}
    if func is torch.optim.SGD:
        if given.get("momentum", 0) or given.get("weight_decay", 0):
            raise MletError("embedding.backend=torchrec: the fused SGD has no momentum or weight_decay (optimizer.dense)")
        params["optimizer"] = EmbOptimType.EXACT_SGD
    elif func is torch.optim.Adagrad:
        params.update(optimizer=EmbOptimType.EXACT_ADAGRAD, eps=float(given.get("eps", 1e-10)))
    elif func is RowWiseAdagrad:
        params.update(optimizer=EmbOptimType.EXACT_ROWWISE_ADAGRAD, eps=float(given.get("eps", 1e-8)))
    elif func in (torch.optim.SparseAdam, torch.optim.Adam):
        if device_type == "cpu":
            return None
        beta1, beta2 = given.get("betas", (0.9, 0.999))
        params.update(optimizer=EmbOptimType.ADAM, eps=float(given.get("eps", 1e-8)), beta1=float(beta1),
                      beta2=float(beta2))
    else:
        raise MletError(
            f"embedding.backend=torchrec: no fused FBGEMM optimiser for {_name(factory)} "
            "(optimizer=sgd, adagrad, rowwise_adagrad, adam or sparse_adam)"
        )
    return params
