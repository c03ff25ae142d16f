"""The LightningModule: trains a (possibly multi-layer) embedding + CTR model, and always scores
the collapsed single-layer model.

Validation and test collapse the embedding once per epoch (every MLET pair replaced by its
``n x d`` product) and evaluate that, so every reported number is the deployed model's (an MLET
embedding with ``eval_mode=gather`` computes the same rows as ``A[rows] B`` per batch instead). AUC and
logloss are exact over the whole split (predictions gathered, then computed once), not averages
of per-batch values. Under DDP each process evaluates a distinct block of rows; the blocks are
gathered (each row once, in split order) before the metrics are computed.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.trainer.states import TrainerFn
from torch import nn

from mlet.embeddings import FieldEmbedding, SingleLayerEmbedding
from mlet.embeddings.quantize import check_quantize, deployed_bytes, quantize
from mlet.metrics import auc, logloss
from mlet.models.layers import needs_category_weights
from mlet.optim import SparseAwareOptimizer, clip_gradients_

MODEL_INITS = ("default", "xavier")


def init_model_(model: nn.Module, scheme: str) -> None:
    """Initialise the dense layers of a CTR model in place.

    ``default``: leave PyTorch's init (Kaiming-uniform weights, uniform biases) as built.
    ``xavier``: every ``nn.Linear`` weight Xavier-normal, its bias zero (FuxiCTR/BARS). Other
    parameters (e.g. cross-network weights held as plain tensors) keep their own init.
    """
    if scheme not in MODEL_INITS:
        raise ValueError(f"model_init must be one of {', '.join(MODEL_INITS)}; got {scheme!r}")
    if scheme == "default":
        return
    for layer in model.modules():
        if isinstance(layer, nn.Linear):
            nn.init.xavier_normal_(layer.weight)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


class CTRNet(nn.Module):
    """Embedding then model: ``(dense[B, D], cat[B, F]) -> logits[B]``.

    A model with a first-order term whose weights come from a table of their own (``first_order:
    table``, :func:`mlet.models.layers.needs_category_weights`) also gets each category's weight, looked up
    here in a table of one scalar per category (``first_order``: a single-layer table of width 1,
    drawn from N(0, 1e-4^2) as BARS/FuxiCTR's ``LR_Layer`` is), so the model still never sees
    category indices or how any table is built. The table is part of the deployed model (its
    size counts as the model's, not the embedding's); it is never factorised.
    """

    def __init__(self, embedding: FieldEmbedding, model: nn.Module, first_order: FieldEmbedding | None = None) -> None:
        super().__init__()
        self.embedding = embedding
        self.model = model
        if first_order is None and needs_category_weights(model):
            first_order = SingleLayerEmbedding(embedding.cardinalities, 1, table_init="normal", init_std=1e-4)
        self.first_order = first_order

    def head(self, embedded: torch.Tensor, dense: torch.Tensor, cat: torch.Tensor) -> torch.Tensor:
        """The model on already embedded fields (``cat`` only for the first-order weights)."""
        if self.first_order is None:
            return self.model(embedded, dense)
        return self.model(embedded, dense, self.first_order(cat).squeeze(-1))

    def forward(self, dense: torch.Tensor, cat: torch.Tensor) -> torch.Tensor:
        return self.head(self.embedding(cat), dense, cat)

    def deployed(self, embedding: FieldEmbedding | None = None) -> "CTRNet":
        """The net with the deployed embedding (default: the collapsed one; a quantised one from
        :meth:`CTRModule.deployed_embedding`), the same model and first-order table."""
        return CTRNet(self.embedding.collapse() if embedding is None else embedding, self.model, self.first_order)

    def sparse_parameters(self) -> list[nn.Parameter]:
        """The per-category tables: the embedding's and the first-order weights'."""
        extra = self.first_order.sparse_parameters() if self.first_order is not None else []
        return [*self.embedding.sparse_parameters(), *extra]

    def set_sparse(self, value: bool) -> None:
        self.embedding.sparse = value
        if self.first_order is not None:
            self.first_order.sparse = value


def selection_metric(quantize: str) -> str:
    """The logged metric training decisions watch (best checkpoint, early stopping, a plateau
    scheduler): the validation AUC of the model as trained, i.e. unquantised. Post-training
    quantisation is applied to the network training chose, as an inference server would; the
    callbacks config reads it through ``${mlet.selection_metric:${quantize}}``."""
    return "val_auc" if check_quantize(quantize) == "none" else "val_auc_unquantized"


def best_validation(history: list[dict[str, Any]], selection: str = "val_auc") -> dict[str, Any]:
    """The validation epoch training chose from a run's per-epoch history: the highest ``selection``
    (:func:`selection_metric`), the first on a tie, as the checkpoint callback keeps it; a missing or
    NaN AUC never wins."""
    def score(entry: dict[str, Any]) -> float:
        value = entry.get(selection)
        return value if value is not None and value == value else float("-inf")

    return max(history, key=score)


class CTRModule(pl.LightningModule):
    """Args:
    embedding: any :class:`FieldEmbedding`.
    model: a CTR model taking ``(embedded[B, F, d], dense[B, D])``.
    optimizer: a :class:`mlet.optim.SparseAwareOptimizer` (what ``conf/optimizer`` builds): the
        embedding's ``sparse`` flag is set to match it, its ``sparse_parameters()`` go to the sparse
        optimiser and everything else to the dense one. A plain ``params -> Optimizer`` callable
        (a Hydra ``_partial_``) also works: it gets every parameter and the embedding is left as is.
        Default: SparseAdam(lr=1e-3) on the tables, Adam(lr=1e-3) on the rest (``optimizer=sparse_adam``).
    lr_scheduler: ``optimizer -> scheduler`` (a Hydra ``_partial_``, ``conf/lr_scheduler``) or None.
        Stepped once per epoch after validation; a ``ReduceLROnPlateau`` watches the validation AUC
        (:func:`selection_metric`; its ``mode`` must be ``max``). It changes the learning rate of
        every parameter group, the dense and the sparse optimiser's alike.
    embedding_l2: L2 penalty on the embedding rows the batch looks up. Added to the batch's mean
        log loss: ``embedding_l2 / 2 * sum over the DISTINCT rows r looked up in the batch of
        ||e_r||^2``, with ``e_r`` the row of the collapsed table (single-layer ``W_r``; MLET
        ``A_r B_f``), each distinct row counted once however often the batch uses it. Its gradient
        on a looked-up row is ``embedding_l2 * e_r``, what FuxiCTR's ``embedding_regularizer`` gives
        every row at every step; rows absent from the batch get none (FuxiCTR penalises the whole
        table each step, a dense gradient that a sparse optimiser cannot take). 0 disables it.
    quantize: ``none``, ``fp16``, ``int8`` or ``int4``: the deployed (collapsed) tables are
        quantised row-wise after training (:mod:`mlet.embeddings.quantize`). Validation and test
        score the quantised model (``val_auc``, ``test_auc``) and, in the same pass, the unquantised
        one (``*_auc_unquantized``, ``*_logloss_unquantized``). Training itself never sees the
        quantisation: the best checkpoint, early stopping and a plateau scheduler watch the
        unquantised validation AUC (:func:`selection_metric`), so a quantised run trains exactly the
        network a ``quantize=none`` run of the same config and seed trains, and its record holds both
        deployed forms.
    """

    def __init__(
        self,
        embedding: FieldEmbedding,
        model: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        lr_scheduler: Callable[[torch.optim.Optimizer], Any] | None = None,
        embedding_l2: float = 0.0,
        quantize: str = "none",
    ) -> None:
        super().__init__()
        self.quantize = check_quantize(quantize)
        if isinstance(embedding_l2, bool) or not isinstance(embedding_l2, (int, float)) or embedding_l2 < 0:
            raise ValueError(f"embedding_l2 must be a number >= 0, got {embedding_l2!r}")
        self.embedding_l2 = float(embedding_l2)
        self.lr_scheduler_factory = lr_scheduler
        self.net = CTRNet(embedding, model)
        if optimizer is None:  # the default of conf/optimizer: SparseAdam on the tables, Adam elsewhere
            optimizer = SparseAwareOptimizer(partial(torch.optim.Adam), partial(torch.optim.SparseAdam), lr=1e-3)
        self.optimizer_factory = optimizer
        sparse = getattr(self.optimizer_factory, "sparse_gradients", None)
        if sparse is not None:  # the optimiser decides whether the tables produce sparse gradients
            self.net.set_sparse(sparse)
        self._eval_embedding: FieldEmbedding | None = None
        self._unquantized: FieldEmbedding | None = None  # the unquantised deployed model, scored beside it
        self._outputs: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        # results["val"] / ["test"]: the latest evaluation (metrics, logits, labels);
        # results["val_history"]: one entry per validation epoch (epoch, step, val_auc, val_logloss),
        # kept in the checkpoints so a resumed run's record has every epoch.
        self.results: dict[str, Any] = {"val_history": []}

    @property
    def embedding(self) -> FieldEmbedding:
        return self.net.embedding

    @property
    def selection_metric(self) -> str:
        return selection_metric(self.quantize)

    def forward(self, dense: torch.Tensor, cat: torch.Tensor) -> torch.Tensor:
        return self.net(dense, cat)

    # ---- training ------------------------------------------------------------------------------
    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        dense, cat, label = batch
        embedded = self.net.embedding(cat)
        loss = F.binary_cross_entropy_with_logits(self.net.head(embedded, dense, cat), label)
        if self.embedding_l2:
            penalty = self.embedding_penalty(cat, embedded)
            self.log("train_embedding_l2", penalty.detach(), on_step=False, on_epoch=True, batch_size=len(label))
            loss = loss + penalty
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"non-finite training loss ({loss.item()}) at epoch {self.current_epoch}, step {self.global_step}: "
                "training stopped; the checkpoints written so far are kept (lower optimizer.lr?)"
            )
        self.log("train_loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(label))
        return loss

    def embedding_penalty(self, cat: torch.Tensor, embedded: torch.Tensor) -> torch.Tensor:
        """``embedding_l2 / 2 * sum_{distinct rows r of the batch} ||e_r||^2`` from the looked-up
        vectors ``embedded[B, F, d]``: each lookup weighted by 1 / (uses of its row in the batch),
        so a row used c times counts once (same value and gradient as looking each row up once)."""
        rows = self.embedding.rows(cat)
        _, inverse, counts = torch.unique(rows, return_inverse=True, return_counts=True)
        weight = 1.0 / counts[inverse].to(embedded.dtype)  # [B, F]
        return 0.5 * self.embedding_l2 * (embedded.pow(2).sum(-1) * weight).sum()

    def configure_optimizers(self):
        # Under the TorchRec backend (mlet.torchrec_strategy) the sharded tables' optimiser is FBGEMM's,
        # fused into backward: they are left out here; replicated (data_parallel) tables, and sharded ones
        # on TorchRec's dense kernel (Adam on a CPU), take the table optimiser.
        table_ids = getattr(self, "table_parameter_ids", set())
        trainable = [p for p in self.parameters() if p.requires_grad and id(p) not in table_ids]
        factory = self.optimizer_factory
        if not hasattr(factory, "build"):
            optimizer = factory(trainable)
        else:
            torchrec = getattr(self.embedding, "backend", "native") == "torchrec"
            if torchrec:  # the tables not fused (mlet.torchrec_strategy.table_parameters), dense gradients
                dense, tables = trainable, getattr(self, "stepped_tables", [])
            else:
                sparse_ids = {id(p) for p in self.net.sparse_parameters()}  # the tables
                dense = [p for p in trainable if id(p) not in sparse_ids]
                tables = [p for p in trainable if id(p) in sparse_ids]
            optimizer = factory.build(dense, tables, sparsify=torchrec)
        if self.lr_scheduler_factory is None:
            return optimizer
        scheduler = self.lr_scheduler_factory(optimizer)
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau) and scheduler.mode != "max":
            raise ValueError(f"lr_scheduler.mode must be max (it watches val_auc), got {scheduler.mode!r}")
        # Lightning steps it after each validation, with the (unquantised) val AUC for a plateau scheduler
        config = {"scheduler": scheduler, "interval": "epoch", "frequency": 1, "monitor": self.selection_metric,
                  "strict": True}
        return {"optimizer": optimizer, "lr_scheduler": config}

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """``trainer.gradient_clip_val``: Lightning's own clipping (``torch.nn.utils.clip_grad_norm_``)
        cannot read the tables' sparse gradients; :func:`mlet.optim.clip_gradients_` clips dense and
        sparse gradients together (one global norm, as torch computes it for dense ones)."""
        if gradient_clip_val is None or gradient_clip_val == 0:
            return
        params = [p for group in optimizer.param_groups for p in group["params"]]
        clip_gradients_(params, float(gradient_clip_val), gradient_clip_algorithm or "norm")

    # ---- evaluation on the collapsed model ---------------------------------------------------
    def deployed_embedding(self) -> FieldEmbedding:
        """The embedding as deployed: collapsed, then quantised (``quantize``); what export writes."""
        return quantize(self.embedding.collapse(), self.quantize)

    @property
    def inference_bytes(self) -> int:
        """Bytes of the deployed embedding (tables, kept projections, quantisation scales and biases)."""
        if self.quantize == "none":
            return self.embedding.inference_bytes
        return deployed_bytes(self.deployed_embedding())

    @property
    def model_bytes(self) -> int:
        """Bytes of the whole deployed network: the deployed embedding, the model's weights and the
        first-order table (``CTRNet.first_order``) where the model has one."""
        first_order = deployed_bytes(self.net.first_order) if self.net.first_order is not None else 0
        return self.inference_bytes + deployed_bytes(self.net.model) + first_order

    def _start_eval(self, stage: str) -> None:
        if self.quantize == "none":
            self._eval_embedding, self._unquantized = self.embedding.for_evaluation(), None
        else:
            self._eval_embedding, self._unquantized = self.deployed_embedding(), self.embedding.for_evaluation()
        self._outputs[stage] = []

    def _eval_step(self, stage: str, batch) -> None:
        dense, cat, label = batch
        logits = self.net.head(self._eval_embedding(cat), dense, cat).detach().float()
        out = (logits, label.float())
        if self._unquantized is not None:
            out += (self.net.head(self._unquantized(cat), dense, cat).detach().float(),)
        self._outputs[stage].append(out)

    def _gather_rows(self, local: torch.Tensor) -> torch.Tensor:
        """``local[C, n_rank]`` of every process concatenated along dim 1 in rank order.

        Each process evaluates its own contiguous block of the split (``BatchKeys``), so the result
        is the whole split in order, every row once. Blocks differ in length: gather the lengths,
        pad to the longest, gather, cut the padding off."""
        world = self.trainer.world_size if self._trainer is not None else 1
        if world == 1:
            return local
        sizes = self.all_gather(torch.tensor(local.shape[1], device=local.device)).reshape(world).tolist()
        padded = local.new_zeros(local.shape[0], max(sizes))
        padded[:, : local.shape[1]] = local
        gathered = self.all_gather(padded)  # [world, C, longest]
        return torch.cat([gathered[r, :, :n] for r, n in enumerate(sizes)], dim=1)

    def _end_eval(self, stage: str) -> None:
        outputs = self._outputs.pop(stage, [])
        self._eval_embedding = self._unquantized = None
        columns = 2 if self.quantize == "none" else 3  # logits, labels[, unquantised logits]
        local = (
            torch.stack([torch.cat([o[c] for o in outputs]) for c in range(columns)])
            if outputs
            else torch.zeros(columns, 0, device=self.device)
        )
        logits, labels, *unquantized = self._gather_rows(local)  # every process: the whole split, computed once
        if logits.numel() == 0:
            return
        metrics = {f"{stage}_auc": auc(logits, labels), f"{stage}_logloss": logloss(logits, labels)}
        if unquantized:
            metrics |= {f"{stage}_auc_unquantized": auc(unquantized[0], labels),
                        f"{stage}_logloss_unquantized": logloss(unquantized[0], labels)}
        self.results[stage] = {**metrics, "logits": logits.cpu(), "labels": labels.cpu()}
        if stage == "val" and self._trainer is not None and not self.trainer.sanity_checking:
            self.results["val_history"].append({
                "epoch": int(self.current_epoch), "step": int(self.global_step),
                **{k: float(v) for k, v in metrics.items()},
            })
        # Identical on every process (computed from the gathered outputs): syncing with max changes
        # nothing and tells Lightning the epoch value is global.
        self.log_dict(metrics, prog_bar=True, sync_dist=True, reduce_fx="max")

    @property
    def val_history(self) -> list[dict[str, Any]]:
        return self.results["val_history"]

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["mlet_val_history"] = list(self.val_history)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # resuming a fit continues the history; testing the best checkpoint keeps this run's own
        if self._trainer is None or self.trainer.state.fn == TrainerFn.FITTING:
            self.results["val_history"] = list(checkpoint.get("mlet_val_history", []))

    def on_validation_epoch_start(self) -> None:
        self._start_eval("val")

    def validation_step(self, batch, batch_idx: int) -> None:
        self._eval_step("val", batch)

    def on_validation_epoch_end(self) -> None:
        self._end_eval("val")

    def on_test_epoch_start(self) -> None:
        self._start_eval("test")

    def test_step(self, batch, batch_idx: int) -> None:
        self._eval_step("test", batch)

    def on_test_epoch_end(self) -> None:
        self._end_eval("test")
