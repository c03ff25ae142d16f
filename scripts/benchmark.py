#!/usr/bin/env python
"""mlet performance benchmark: prints one table of ratios, each measured within this one run.

Generated data with Criteo's schema (13 dense, 26 categorical fields; cardinalities shaped like
Criteo Kaggle's, water-filled to a total vocabulary, Zipf-distributed category draws), batch 4096,
DLRM with BARS-sized MLPs (bottom and top 400-400-400, batch norm, dropout 0.2).

1. samples/s and peak memory of mlet's training loop (CTRModule + Trainer.fit over CTRDataModule)
   against a minimal hand-written PyTorch loop over the same model and the same in-memory arrays;
2. MLET d=16 k=64 against single-layer d=16, and MLET d=4 k=64 against single-layer d=64
   (iso-quality): step time and peak memory;
3. step time at a total vocabulary of 1M against 10M rows, with the sparse optimiser and with dense Adam;
4. seconds for the exact AUC (and logloss) over 5 million predictions;
5. DataLoader workers: batches/s of the training loader with 0 and 2 worker processes;
6. the table-reduction types at 1/16 of the single-layer bytes (hash, hash_mlet, qr, mixed_dim,
   mixed_dim_mlet, tt; ``embedding.budget=0.0625``) against single-layer d=16: step time and peak
   training memory.

Two configurations compared for speed run in one subprocess, in alternating chunks of
``--steps`` steps (on a shared machine the load swings step times between processes far more than
between neighbouring chunks; dense Adam at the large vocabulary needs ~15 GB and runs alone, in
fewer steps); a timing is the median of ``--repeats`` chunks after ``--warmup``
steps. Peak memory comes from a separate short run per configuration: the resident set's
high-water mark above its level after data generation on a CPU (reset through
/proc/self/clear_refs), torch.cuda.max_memory_allocated on a GPU. Every row names its device.

    python scripts/benchmark.py                       # 1M rows, items 1-5 (3 with 10M)
    python scripts/benchmark.py --threads 1           # steadier on a machine shared with others
    python scripts/benchmark.py --large-vocab 0       # skip the 10M-row configurations
    python scripts/benchmark.py --vocab 10000000      # everything at 10M rows
    python scripts/benchmark.py --items 6             # only the table-reduction rows
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Criteo Kaggle (display advertising challenge) categorical cardinalities C1..C26, full vocabularies.
CRITEO_CARDINALITIES = [
    1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194,
    27, 14992, 5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572,
]
NUM_DENSE = 13
BARS_MLP = [400, 400, 400]


def criteo_cardinalities(total: int) -> list[int]:
    """Criteo's 26 cardinalities with the largest ones capped at one level so that they sum to
    ``total`` (water-filling: what a frequency threshold does to the long tails)."""
    cards = CRITEO_CARDINALITIES
    if total >= sum(cards):
        scale = total / sum(cards)
        return [max(1, round(c * scale)) for c in cards]
    lo, hi = 1, max(cards)
    while lo < hi:  # the largest cap whose capped sum stays within total
        mid = (lo + hi + 1) // 2
        if sum(min(c, mid) for c in cards) <= total:
            lo = mid
        else:
            hi = mid - 1
    capped = [min(c, lo) for c in cards]
    short = total - sum(capped)
    for i in sorted(range(len(cards)), key=lambda i: -cards[i])[:short]:
        capped[i] += 1
    return capped


def zipf_indices(rng: np.random.Generator, n: int, rows: int, exponent: float = 1.1) -> np.ndarray:
    """``rows`` draws from ``0..n-1`` with P(rank r) ~ r^-exponent (continuous inverse CDF), ranks
    scattered over the ids by an affine map so that hot rows are not adjacent."""
    u = rng.random(rows)
    a = 1.0 - exponent
    rank = np.floor(((n**a - 1.0) * u + 1.0) ** (1.0 / a)).astype(np.int64) - 1
    rank = np.clip(rank, 0, n - 1)
    mult = 2654435761
    while math.gcd(mult, n) != 1:
        mult += 2
    return (rank * mult + 12345) % n


def make_arrays(vocab: int, rows: int, seed: int = 0):
    from mlet.data.arrays import CTRArrays, Split

    rng = np.random.default_rng(seed)
    cards = criteo_cardinalities(vocab)
    cat = np.empty((rows, len(cards)), dtype=np.int64)
    for f, n in enumerate(cards):
        cat[:, f] = zipf_indices(rng, n, rows)
    dense = np.log1p(np.floor(rng.lognormal(1.0, 1.5, size=(rows, NUM_DENSE)))).astype(np.float32)
    label = (rng.random(rows) < 0.25).astype(np.float32)
    small = slice(0, min(rows, 4096))
    splits = {"train": Split(dense, cat, label), "val": Split(dense[small], cat[small], label[small])}
    splits["test"] = splits["val"]
    return CTRArrays("criteo-like", [f"I{i + 1}" for i in range(NUM_DENSE)], [f"C{i + 1}" for i in range(26)],
                     cards, splits)


class InMemory:
    def __init__(self, arrays) -> None:
        self.arrays = arrays

    def load(self):
        return self.arrays


# ---- measurement helpers ----------------------------------------------------------------------
def _status() -> dict[str, int]:
    out = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) * 1024
    return out


class PeakMemory:
    """Peak memory above the level at ``start()``: CUDA allocator peak, or the resident set's
    high-water mark (reset through /proc/self/clear_refs) on a CPU."""

    def __init__(self, device) -> None:
        self.device = device

    def start(self) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
            return
        try:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")
        except OSError:
            pass  # then the high-water mark may include data generation: an overestimate
        self.base = _status()["VmRSS"]

    def peak(self) -> int:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() - self.base
        return _status()["VmHWM"] - self.base


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


# the embedding= options the benchmark builds (class names in mlet.embeddings)
EMBEDDINGS = {"single": "SingleLayerEmbedding", "mlet": "MLETEmbedding", "hash": "HashEmbedding",
              "hash_mlet": "HashMLETEmbedding", "qr": "QREmbedding", "mixed_dim": "MixedDimEmbedding",
              "mixed_dim_mlet": "MixedDimMLETEmbedding", "tt": "TTEmbedding"}
REDUCTIONS = ["hash", "hash_mlet", "qr", "mixed_dim", "mixed_dim_mlet", "tt"]  # item 6


def build_net(cfg: dict, cards: list[int]):
    import mlet.embeddings
    from mlet.models.dlrm import DLRM

    kwargs = {"inner_dim": cfg["inner_dim"]} if cfg["embedding"] == "mlet" else {}
    emb = getattr(mlet.embeddings, EMBEDDINGS[cfg["embedding"]])(cards, cfg["dim"], **kwargs,
                                                                 **cfg.get("embedding_args", {}))
    model = DLRM(len(cards), emb.dim, NUM_DENSE, bottom_mlp=BARS_MLP, top_mlp=BARS_MLP, dropout=0.2, batch_norm=True)
    return emb, model


def optimizer_spec(name: str):
    from functools import partial

    import torch

    from mlet.optim import SparseAwareOptimizer

    sparse = partial(torch.optim.SparseAdam) if name == "sparse_adam" else None
    return SparseAwareOptimizer(dense=partial(torch.optim.Adam), sparse=sparse, lr=1e-3)


# ---- training loops ---------------------------------------------------------------------------
class PlainRunner:
    """A minimal hand-written training loop: the same model, Adam on the dense parameters and
    (``sparse_adam``) SparseAdam on the table, batches gathered from in-memory tensors by a random
    permutation, pinned and copied without blocking on a GPU. ``step()`` runs one batch."""

    def __init__(self, cfg: dict, device, arrays) -> None:
        import torch

        from mlet.module import CTRNet

        torch.manual_seed(0)
        self.device, self.batch = device, cfg["batch"]
        emb, model = build_net(cfg, arrays.cardinalities)
        sparse = cfg["optimizer"] == "sparse_adam"
        emb.sparse = sparse
        self.net = CTRNet(emb, model).to(device).train()
        table = {id(p) for p in emb.sparse_parameters()} if sparse else set()
        self.opts = [torch.optim.Adam([p for p in self.net.parameters() if id(p) not in table], lr=1e-3)]
        if sparse:
            self.opts.append(torch.optim.SparseAdam(emb.sparse_parameters(), lr=1e-3))
        train = arrays.splits["train"]
        self.data = [torch.from_numpy(a) for a in (train.dense, train.cat, train.label)]
        self.order = torch.randperm(len(train))
        self.batches = len(train) // self.batch
        self.i = 0

    def step(self) -> None:
        import torch.nn.functional as F

        b = self.i % self.batches
        self.i += 1
        idx = self.order[b * self.batch : (b + 1) * self.batch]
        dense, cat, label = (t[idx] for t in self.data)
        if self.device.type == "cuda":
            dense, cat, label = (t.pin_memory().to(self.device, non_blocking=True) for t in (dense, cat, label))
        for opt in self.opts:
            opt.zero_grad(set_to_none=True)
        loss = F.binary_cross_entropy_with_logits(self.net(dense, cat), label)
        loss.backward()
        for opt in self.opts:
            opt.step()

    def chunk(self, steps: int) -> float:
        _sync(self.device)
        t = time.perf_counter()
        for _ in range(steps):
            self.step()
        _sync(self.device)
        return time.perf_counter() - t


def lightning_fit(cfg: dict, device, arrays, total_steps: int, marks: set[int], between=None) -> list[float]:
    """mlet's loop: CTRModule + Trainer.fit over CTRDataModule for ``total_steps`` steps. Returns
    the start times of the Lightning chunks beginning at ``marks`` and their end times (pairs);
    ``between()`` runs at every mark, outside the timed chunks (the interleaved plain loop)."""
    import pytorch_lightning as pl

    from mlet.data import CTRDataModule
    from mlet.module import CTRModule

    last = max(marks)

    class ChunkTimer(pl.Callback):
        def __init__(self) -> None:
            self.spans: list[float] = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            if batch_idx not in marks:
                return
            _sync(device)
            if batch_idx != min(marks):
                self.spans.append(time.perf_counter())  # end of the chunk before this mark
            if between is not None and batch_idx != last:
                between()
            _sync(device)
            if batch_idx != last:
                self.spans.append(time.perf_counter())  # start of the chunk after it

    emb, model = build_net(cfg, arrays.cardinalities)
    module = CTRModule(emb, model, optimizer=optimizer_spec(cfg["optimizer"]))
    dm = CTRDataModule(InMemory(arrays), batch_size=cfg["batch"], eval_batch_size=16384,
                       num_workers=cfg.get("num_workers", 0))
    timer = ChunkTimer()
    trainer = pl.Trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu", devices=1, max_epochs=1, max_steps=total_steps,
        limit_val_batches=0, num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[timer],
    )
    trainer.fit(module, datamodule=dm)
    return [b - a for a, b in zip(timer.spans[::2], timer.spans[1::2])]


# ---- workers (each runs in its own process) ---------------------------------------------------
def _device(cfg: dict):
    import torch

    return torch.device(cfg["device"])


def work_loops(cfg: dict) -> dict:
    """Item 1's timing: mlet's Lightning loop and the plain loop in one process, alternating
    chunks of ``steps`` steps (plain chunks run between Lightning's, outside its timing)."""
    device = _device(cfg)
    warmup, steps, repeats = cfg["warmup"], cfg["steps"], cfg["repeats"]
    total = warmup + repeats * steps + 1
    arrays = make_arrays(cfg["vocab"], total * cfg["batch"])
    plain = PlainRunner(cfg, device, arrays)
    for _ in range(warmup):
        plain.step()
    plain_chunks: list[float] = []
    marks = {warmup + k * steps for k in range(repeats + 1)}
    ours = lightning_fit(cfg, device, arrays, total, marks,
                         between=lambda: plain_chunks.append(plain.chunk(steps)))
    return {"mlet_step_s": statistics.median(ours) / steps, "plain_step_s": statistics.median(plain_chunks) / steps,
            "mlet_chunks_s": ours, "plain_chunks_s": plain_chunks, "device": str(device)}


def work_pair(cfg: dict) -> dict:
    """Two plain-loop configurations in one process, chunks alternating ABBA ABBA ..."""
    device = _device(cfg)
    warmup, steps, repeats = cfg["warmup"], cfg["steps"], cfg["repeats"]
    rows = (warmup + repeats * steps) * cfg["batch"]
    runners = []
    for key in ("a", "b"):
        one = {**cfg, **cfg[key]}
        runners.append(PlainRunner(one, device, make_arrays(one["vocab"], rows)))
    for r in runners:
        for _ in range(warmup):
            r.step()
    chunks: list[list[float]] = [[], []]
    for rep in range(repeats):
        for j in ((0, 1) if rep % 2 == 0 else (1, 0)):
            chunks[j].append(runners[j].chunk(steps))
    return {"a_step_s": statistics.median(chunks[0]) / steps, "b_step_s": statistics.median(chunks[1]) / steps,
            "a_chunks_s": chunks[0], "b_chunks_s": chunks[1], "device": str(device)}


def work_single(cfg: dict) -> dict:
    """One configuration alone: peak memory (above the level after data generation) and step time."""
    device = _device(cfg)
    warmup, steps, repeats = cfg["warmup"], cfg["steps"], cfg["repeats"]
    total = warmup + repeats * steps + 1
    arrays = make_arrays(cfg["vocab"], total * cfg["batch"])
    memory = PeakMemory(device)
    memory.start()
    if cfg["loop"] == "plain":
        runner = PlainRunner(cfg, device, arrays)
        for _ in range(warmup):
            runner.step()
        chunks = [runner.chunk(steps) for _ in range(repeats)]
    else:
        marks = {warmup + k * steps for k in range(repeats + 1)}
        chunks = lightning_fit(cfg, device, arrays, total, marks)
    peak = memory.peak()
    return {"step_s": statistics.median(chunks) / steps, "chunks_s": chunks, "peak_bytes": peak,
            "device": str(device)}


def work_auc(cfg: dict) -> dict:
    import torch

    from mlet.metrics import auc, logloss

    device = torch.device(cfg["device"])
    gen = torch.Generator().manual_seed(0)
    n = cfg["rows"]
    labels = (torch.rand(n, generator=gen) < 0.25).float()
    scores = (torch.randn(n, generator=gen) + labels).to(device)  # an informative score, few ties
    labels = labels.to(device)

    def timed(fn) -> float:
        fn()  # warm-up
        out = []
        for _ in range(cfg["repeats"]):
            _sync(device)
            t = time.perf_counter()
            fn()
            _sync(device)
            out.append(time.perf_counter() - t)
        return statistics.median(out)

    return {
        "auc_s": timed(lambda: auc(scores, labels)),
        "logloss_s": timed(lambda: logloss(scores, labels)),
        "sort_s": timed(lambda: torch.sort(scores)),
        "device": str(device),
    }


def work_loader(cfg: dict) -> dict:
    from mlet.data import CTRDataModule

    arrays = make_arrays(cfg["vocab"], cfg["batch"] * cfg["batches"])
    out = {}
    for workers in (0, 2):
        dm = CTRDataModule(InMemory(arrays), batch_size=cfg["batch"], num_workers=workers)
        dm.setup()
        loader = dm.train_dataloader()
        runs = []
        for _ in range(cfg["repeats"] + 1):  # the first pass starts the (persistent) workers
            t = time.perf_counter()
            count = sum(1 for _ in loader)
            runs.append(count / (time.perf_counter() - t))
        out[f"workers{workers}_batches_per_s"] = statistics.median(runs[1:])
    out["device"] = "cpu"
    return out


WORKERS = {"loops": work_loops, "pair": work_pair, "single": work_single, "auc": work_auc, "loader": work_loader}


# ---- driver -----------------------------------------------------------------------------------
def run_child(cfg: dict) -> dict:
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(cfg)],
        capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"benchmark: configuration {cfg} failed (exit {proc.returncode})")
    return json.loads(lines[-1][len("RESULT "):])


def fmt_bytes(n: float) -> str:
    return f"{n / 2**20:,.0f} MiB"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vocab", type=int, default=1_000_000, help="total vocabulary (rows) of items 1, 2, 5")
    ap.add_argument("--large-vocab", type=int, default=10_000_000, help="item 3's large vocabulary (0: skip item 3)")
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    ap.add_argument("--steps", type=int, default=5, help="steps per timed repetition")
    ap.add_argument("--repeats", type=int, default=5, help="timed repetitions (the median is reported)")
    ap.add_argument("--auc-rows", type=int, default=5_000_000)
    ap.add_argument("--device", default="auto", help="auto (cuda when available), cpu or cuda")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads per process (0: torch's default); "
                    "1 gives steadier ratios on a shared machine")
    ap.add_argument("--items", default="1,2,3,4,5,6", help="which items to run, e.g. 1,4")
    ap.add_argument("--json", type=Path, default=None, help="also write every raw measurement here")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.worker:
        cfg = json.loads(args.worker)
        if cfg.get("threads"):
            import torch

            torch.set_num_threads(cfg["threads"])
        print("RESULT " + json.dumps(WORKERS[cfg["kind"]](cfg)), flush=True)
        return

    import torch

    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else ("cpu" if args.device == "auto" else args.device)
    items = {int(i) for i in args.items.split(",")}
    base = {"device": device, "threads": args.threads, "batch": args.batch, "warmup": args.warmup,
            "steps": args.steps, "repeats": args.repeats, "vocab": args.vocab, "optimizer": "sparse_adam",
            "loop": "lightning", "embedding": "mlet", "dim": 16, "inner_dim": 64}
    short = {"warmup": 2, "steps": 2, "repeats": 1}  # memory-only runs: the peak is reached in the first steps
    rows: list[tuple] = []  # (item, what, device, reference, value, ratio, target, met)
    raw: dict[str, dict] = {}
    started = time.time()

    def child(name: str, kind: str, **over) -> dict:
        print(f"... {name}", file=sys.stderr, flush=True)
        raw[name] = result = run_child({**base, "kind": kind, **over})
        return result

    def add(item, what, dev, ref, val, ratio, target=None, met=None):
        rows.append((item, what, dev, ref, val, ratio, target or "", "" if met is None else ("yes" if met else "NO")))

    def ms(seconds: float) -> str:
        return f"{seconds * 1e3:.0f} ms"

    def memory_row(item: int, what: str, ref: dict, val: dict) -> None:
        r = val["peak_bytes"] / max(ref["peak_bytes"], 1)
        add(item, what, val["device"], fmt_bytes(ref["peak_bytes"]), fmt_bytes(val["peak_bytes"]), f"{r:.2f}x")

    if 1 in items:
        res = child("1 loops", "loops")
        r = res["plain_step_s"] / res["mlet_step_s"]
        add(1, "training samples/s: mlet loop / plain PyTorch loop (MLET d16 k64, sparse_adam; one process, "
            "alternating chunks)", res["device"], f"{args.batch / res['plain_step_s']:,.0f}/s",
            f"{args.batch / res['mlet_step_s']:,.0f}/s", f"{r:.2f}x", ">= 0.9x", r >= 0.9)
        plain = child("1 memory plain", "single", loop="plain", **short)
        ours = child("1 memory mlet", "single", loop="lightning", **short)
        memory_row(1, "peak memory: mlet loop / plain loop", plain, ours)
    if 2 in items:
        for (d_ref, d, k, target) in ((16, 16, 64, 1.15), (64, 4, 64, None)):
            ref_cfg = {"embedding": "single", "dim": d_ref}
            val_cfg = {"embedding": "mlet", "dim": d, "inner_dim": k}
            res = child(f"2 single d{d_ref} vs mlet d{d} k{k}", "pair", a=ref_cfg, b=val_cfg)
            r = res["b_step_s"] / res["a_step_s"]
            add(2, f"step time: MLET d{d} k{k} / single d{d_ref} (plain loop; one process, alternating chunks)",
                res["device"], ms(res["a_step_s"]), ms(res["b_step_s"]), f"{r:.2f}x",
                f"<= {target}x" if target else None, (r <= target) if target else None)
            ref = child(f"2 memory single d{d_ref}", "single", **ref_cfg, **short)
            val = child(f"2 memory mlet d{d} k{k}", "single", **val_cfg, **short)
            memory_row(2, f"peak memory: MLET d{d} k{k} / single d{d_ref} (mlet loop)", ref, val)
    if 3 in items and args.large_vocab:
        small_v, big_v = f"{args.vocab / 1e6:g}M", f"{args.large_vocab / 1e6:g}M"
        res = child(f"3 sparse_adam {small_v} vs {big_v}", "pair", a={}, b={"vocab": args.large_vocab})
        r = res["b_step_s"] / res["a_step_s"]
        add(3, f"step time (sparse_adam, MLET d16 k64): {big_v} / {small_v} rows (plain loop; one process, "
            "alternating chunks)", res["device"], ms(res["a_step_s"]), ms(res["b_step_s"]), f"{r:.2f}x", "<= 1.5x",
            r <= 1.5)
        sparse_big_step = res["b_step_s"]
        ref = child(f"3 memory sparse_adam {small_v}", "single", **short)
        val = child(f"3 memory sparse_adam {big_v}", "single", vocab=args.large_vocab, **short)
        memory_row(3, f"peak memory (sparse_adam): {big_v} / {small_v} rows (mlet loop)", ref, val)
        # dense Adam at 10M rows needs ~15 GB and seconds per step: separate processes, fewer steps
        dense = {"optimizer": "adam", "loop": "plain", "warmup": 2, "steps": 2, "repeats": 3}
        ref = child(f"3 adam {small_v}", "single", **dense)
        val = child(f"3 adam {big_v}", "single", vocab=args.large_vocab, **dense)
        r = val["step_s"] / ref["step_s"]
        add(3, f"step time (adam, MLET d16 k64): {big_v} / {small_v} rows (plain loop; separate processes, "
            "median of 3 x 2 steps)", val["device"], ms(ref["step_s"]), ms(val["step_s"]), f"{r:.2f}x")
        memory_row(3, f"peak memory (adam): {big_v} / {small_v} rows (plain loop)", ref, val)
        r = val["step_s"] / sparse_big_step
        add(3, f"step time at {big_v} rows: adam / sparse_adam (plain loop)", val["device"],
            ms(sparse_big_step), ms(val["step_s"]), f"{r:.2f}x")
    if 4 in items:
        print("... 4 auc", file=sys.stderr, flush=True)
        res = raw["4 auc"] = run_child({"kind": "auc", "device": device, "threads": args.threads, "rows": args.auc_rows, "repeats": args.repeats})
        n = f"{args.auc_rows / 1e6:g}M"
        add(4, f"exact AUC over {n} predictions (s); reference: torch.sort of the scores", res["device"],
            f"{res['sort_s']:.2f} s", f"{res['auc_s']:.2f} s", f"{res['auc_s'] / res['sort_s']:.2f}x", "< 2 s",
            res["auc_s"] < 2.0)
        add(4, f"logloss over {n} predictions (s)", res["device"], "", f"{res['logloss_s']:.3f} s", "")
    if 5 in items:
        print("... 5 loader", file=sys.stderr, flush=True)
        res = raw["5 loader"] = run_child({"kind": "loader", "threads": args.threads, "vocab": args.vocab, "batch": args.batch, "batches": 40,
                                           "repeats": args.repeats})
        r = res["workers2_batches_per_s"] / res["workers0_batches_per_s"]
        add(5, "training loader batches/s: 2 workers / 0 workers (in-memory arrays)", res["device"],
            f"{res['workers0_batches_per_s']:.1f}/s", f"{res['workers2_batches_per_s']:.1f}/s", f"{r:.2f}x")

    if 6 in items:
        ref_cfg = {"embedding": "single", "dim": 16}
        ref = child("6 memory single d16", "single", **ref_cfg, **short)
        for kind in REDUCTIONS:
            args_ = {"budget": 0.0625, **({"inner_dim": 64} if kind.endswith("_mlet") else {})}
            val_cfg = {"embedding": kind, "dim": 16, "embedding_args": args_}
            res = child(f"6 single d16 vs {kind}", "pair", a=ref_cfg, b=val_cfg)
            r = res["b_step_s"] / res["a_step_s"]
            add(6, f"step time: {kind} at 1/16 of the bytes / single d16 (plain loop; one process, alternating "
                "chunks)", res["device"], ms(res["a_step_s"]), ms(res["b_step_s"]), f"{r:.2f}x")
            val = child(f"6 memory {kind}", "single", **val_cfg, **short)
            memory_row(6, f"peak memory: {kind} at 1/16 of the bytes / single d16 (mlet loop)", ref, val)

    cpu = os.cpu_count()
    print(f"\nmlet benchmark: vocab {args.vocab:,} rows (item 3: {args.large_vocab:,}), batch {args.batch}, "
          f"DLRM bottom/top MLP {BARS_MLP}, warm-up {args.warmup} steps, median of {args.repeats} x {args.steps} steps; "
          f"torch {torch.__version__}, {cpu} CPUs, {args.threads or torch.get_num_threads()} torch threads per process, "
          f"{time.time() - started:.0f} s\n")
    header = ("#", "measurement", "device", "reference", "value", "ratio", "target", "met")
    table = [header, *[tuple(str(c) for c in r) for r in rows]]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    for i, r in enumerate(table):
        print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |")
        if i == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)}, "raw": raw}, indent=2))


if __name__ == "__main__":
    main()
