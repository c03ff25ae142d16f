"""Benchmark of the TorchRec backend against the native one, 2 processes (gloo on the CPU, NCCL on GPUs).

    python scripts/bench_torchrec.py                       # Criteo-shaped: 26 fields, 13 dense, MLET d=16 k=64
    python scripts/bench_torchrec.py --rows 200000 --steps 10

Both backends train the same network (MLET embedding + DLRM with BARS-sized MLPs) on the same
batches with the same optimiser (row-wise Adagrad on the tables, Adagrad elsewhere), each process
a distinct block of the global batch:

* native: ``nn.Embedding`` tables replicated in every process, DDP (sparse gradients all-reduced);
* torchrec: the tables sharded table-wise by TorchRec's planner, FBGEMM's row-wise Adagrad fused
  into backward, the rest under DDP.

Rows printed: per-process embedding memory (table weights + table optimiser state, measured from the
tensors each process holds), and the median step time (forward, backward, optimiser step) of each
backend, with their ratios: both measured in this run. Needs the TorchRec backend
(``scripts/install_torchrec.sh``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from functools import partial

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

FIELDS, DENSE = 26, 13


def cardinalities(rows: int) -> list[int]:
    """Criteo-like skew: a few large tables hold most rows."""
    weights = [0.5 ** (i / 3) for i in range(FIELDS)]
    total = sum(weights)
    return [max(4, int(rows * w / total)) for w in weights]


def build(backend: str, cards: list[int], dim: int, inner: int):
    from mlet.embeddings import MLETEmbedding
    from mlet.models.dlrm import DLRM
    from mlet.module import CTRNet

    torch.manual_seed(0)
    emb = MLETEmbedding(cards, dim, inner, backend=backend, sharding="table_wise")
    return CTRNet(emb, DLRM(FIELDS, dim, DENSE, [512, 256, dim], [512, 256]))


def optimiser():
    from mlet.optim import RowWiseAdagrad, SparseAwareOptimizer

    return SparseAwareOptimizer(partial(torch.optim.Adagrad), partial(RowWiseAdagrad), lr=0.01)


def local_bytes(value) -> int:
    """Bytes of a (sharded) tensor this process holds."""
    if hasattr(value, "local_shards"):
        return sum(s.tensor.numel() * s.tensor.element_size() for s in value.local_shards())
    return value.numel() * value.element_size() if isinstance(value, torch.Tensor) else 0


def worker(rank: int, world: int, args, port: int, results) -> None:
    torch.set_num_threads(args.threads)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    cards = cardinalities(args.rows)
    net = build(args.backend, cards, args.dim, args.inner)
    opt_cfg = optimiser()
    if args.backend == "torchrec":
        from mlet.torchrec_strategy import shard

        model = shard(net, opt_cfg, torch.device("cpu"))
        fused = model.fused_optimizer
        opt = opt_cfg.build([p for p in net.parameters() if id(p) not in {id(q) for q in fused.params.values()}])
        local = net.embedding.inner.parameters_bytes()
        state = sum(local_bytes(t) for s in fused.state.values() for t in s.values())
    else:
        net.embedding.sparse = True
        model = torch.nn.parallel.DistributedDataParallel(net)
        tables = net.embedding.sparse_parameters()
        opt = opt_cfg.build([p for p in net.parameters() if all(p is not t for t in tables)], tables)
        local = sum(t.numel() * t.element_size() for t in tables)
        state = None  # measured after the first step (the optimiser allocates it lazily)
    g = torch.Generator().manual_seed(rank)
    per = args.batch // world
    times = []
    for step in range(args.warmup + args.steps):
        dense = torch.randn(per, DENSE, generator=g)
        cat = torch.stack([(torch.rand(per, generator=g) ** 3 * n).long().clamp_max(n - 1) for n in cards], 1)
        label = torch.randint(0, 2, (per,), generator=g).float()
        dist.barrier()
        start = time.perf_counter()
        loss = F.binary_cross_entropy_with_logits(model(dense, cat), label)
        opt.zero_grad()
        loss.backward()
        opt.step()
        dist.barrier()
        if step >= args.warmup:
            times.append(time.perf_counter() - start)
    if state is None:
        state = sum(s["sum"].numel() * s["sum"].element_size() for p, s in opt.state.items()
                    if any(p is t for t in net.embedding.sparse_parameters()))
    results[rank] = {"table_bytes": local, "state_bytes": state, "step_s": statistics.median(times)}
    dist.barrier()
    dist.destroy_process_group()


def measure(backend: str, args) -> list[dict]:
    args.backend = backend
    manager = mp.Manager()
    results = manager.dict()
    mp.spawn(worker, args=(args.world, args, 29400 + os.getpid() % 500 + (backend == "torchrec"), results),
             nprocs=args.world)
    return [dict(results[r]) for r in range(args.world)]


def mib(n: float) -> str:
    return f"{n / 2**20:,.1f} MiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="total vocabulary rows over the 26 fields")
    parser.add_argument("--dim", type=int, default=16)
    parser.add_argument("--inner", type=int, default=64)
    parser.add_argument("--batch", type=int, default=4096, help="global batch (split over the processes)")
    parser.add_argument("--world", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    args = parser.parse_args()
    native, trec = measure("native", args), measure("torchrec", args)
    emb = lambda r: r["table_bytes"] + r["state_bytes"]  # noqa: E731
    rows = [
        ("embedding memory per process (A + state), max over processes", mib(max(map(emb, native))),
         mib(max(map(emb, trec))), max(map(emb, trec)) / max(map(emb, native))),
        ("  of which table A", mib(max(r["table_bytes"] for r in native)), mib(max(r["table_bytes"] for r in trec)),
         max(r["table_bytes"] for r in trec) / max(r["table_bytes"] for r in native)),
        ("  of which row-wise Adagrad state", mib(max(r["state_bytes"] for r in native)),
         mib(max(r["state_bytes"] for r in trec)),
         max(r["state_bytes"] for r in trec) / max(1, max(r["state_bytes"] for r in native))),
        ("step time (median, rank 0)", f"{native[0]['step_s'] * 1e3:,.0f} ms", f"{trec[0]['step_s'] * 1e3:,.0f} ms",
         trec[0]["step_s"] / native[0]["step_s"]),
    ]
    device = "cpu (gloo)"
    print(f"MLET d={args.dim} k={args.inner}, {FIELDS} fields, {args.rows:,} rows, global batch {args.batch}, "
          f"{args.world} processes, {args.threads} thread(s) each, device: {device}")
    print("| measurement | native (replicated, DDP) | torchrec (table-wise sharded) | torchrec / native |")
    print("|---|---|---|---|")
    for name, a, b, ratio in rows:
        print(f"| {name} | {a} | {b} | {ratio:.2f}x |")
    print("per process (torchrec):", ", ".join(f"rank {r}: A {mib(x['table_bytes'])} + state {mib(x['state_bytes'])}"
                                             for r, x in enumerate(trec)))


if __name__ == "__main__":
    main()
