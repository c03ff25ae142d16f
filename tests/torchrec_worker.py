"""Run by tests/test_torchrec.py: the same tiny training under the native backend (one process) and
the TorchRec backend (``WORLD`` gloo processes on the CPU, tables sharded), for the equality tests.

Usage: ``python tests/torchrec_worker.py OUT KIND SHARDING WORLD [OPTIMIZER]`` (KIND: single | mlet;
WORLD 1: native, in this process; OPTIMIZER: sgd (default) | rowwise_adagrad | sparse_adam). Writes ``OUT``
(torch.save): the loss of every step (the global batch's mean), the final collapsed table, and the collapsed table computed from sharded vs gathered weights.
"""

import os
import sys

import torch
import torch.nn.functional as F

CARDS = [300, 11, 37, 5, 23]
OPTIMIZER = "sgd"
DIM, INNER, DENSE, BATCH, STEPS, LR = 4, 8, 3, 32, 6, 0.5


def build(kind: str, backend: str, sharding: str):
    """``sharding`` ``mixed``: field 1 replicated, field 2 column-wise, the rest table-wise."""
    from mlet.embeddings import MLETEmbedding, SingleLayerEmbedding
    from mlet.models.dlrm import DLRM
    from mlet.module import CTRNet

    torch.manual_seed(0)
    table_sharding = None
    if sharding == "mixed":
        sharding, table_sharding = "table_wise", {1: "data_parallel", 2: "column_wise"}
    common = dict(backend=backend, sharding=sharding, table_sharding=table_sharding, table_init="normal", init_std=0.1)
    emb = (SingleLayerEmbedding(CARDS, DIM, **common) if kind == "single"
           else MLETEmbedding(CARDS, DIM, INNER, **common))
    return CTRNet(emb, DLRM(len(CARDS), DIM, DENSE, [8], [8]))


def batches():
    g = torch.Generator().manual_seed(1)
    for _ in range(STEPS):
        dense = torch.randn(BATCH, DENSE, generator=g)
        cat = torch.stack([torch.randint(0, n, (BATCH,), generator=g) for n in CARDS], 1)
        # a skewed draw: repeated rows within a batch (the fused kernels must sum them as SGD does)
        cat[: BATCH // 2] = cat[: BATCH // 2] % 3
        label = torch.randint(0, 2, (BATCH,), generator=g).float()
        yield dense, cat, label


def sgd():
    """Plain SGD everywhere, or (OPTIMIZER=rowwise_adagrad) Adagrad + row-wise Adagrad on the tables."""
    from functools import partial

    from mlet.optim import RowWiseAdagrad, SparseAwareOptimizer

    if OPTIMIZER == "rowwise_adagrad":
        return SparseAwareOptimizer(partial(torch.optim.Adagrad), partial(RowWiseAdagrad), lr=0.05)
    if OPTIMIZER == "sparse_adam":  # no fused CPU kernel: TorchRec's dense kernel, SparseAdam in torch
        return SparseAwareOptimizer(partial(torch.optim.Adam), partial(torch.optim.SparseAdam), lr=0.05)
    return SparseAwareOptimizer(partial(torch.optim.SGD), partial(torch.optim.SGD), lr=LR)


def native(out: str, kind: str) -> None:
    net = build(kind, "native", "auto")
    net.embedding.sparse = True
    opt = sgd().build([p for n, p in net.named_parameters() if "embedding.table" not in n and "embedding.inner" not in n],
                      net.embedding.sparse_parameters())
    losses = []
    for dense, cat, label in batches():
        loss = F.binary_cross_entropy_with_logits(net(dense, cat), label)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    collapsed = net.embedding.collapse().table.weight.detach().clone()
    torch.save({"losses": losses, "collapsed": collapsed}, out)


def sharded(rank: int, world: int, out: str, kind: str, sharding: str, port: int, optimizer: str) -> None:
    from mlet.train import end_process_group

    try:
        train_sharded(rank, world, out, kind, sharding, port, optimizer)
    finally:  # as mlet-train does, once the sharded model is out of scope
        end_process_group()


def train_sharded(rank: int, world: int, out: str, kind: str, sharding: str, port: int, optimizer: str) -> None:
    global OPTIMIZER
    OPTIMIZER = optimizer
    import torch.distributed as dist

    from mlet.torchrec_strategy import shard, table_parameters

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    net = build(kind, "torchrec", sharding)
    optimizer = sgd()
    dmp = shard(net, optimizer, torch.device("cpu"))
    table_ids, stepped_tables = table_parameters(net, optimizer, "cpu")
    opt = optimizer.build([p for p in net.parameters() if id(p) not in table_ids], stepped_tables, sparsify=True)
    losses = []
    per = BATCH // world
    for dense, cat, label in batches():
        part = slice(rank * per, (rank + 1) * per)
        loss = F.binary_cross_entropy_with_logits(dmp(dense[part], cat[part]), label[part])
        opt.zero_grad()
        loss.backward()  # the tables' SGD step happens here (fused)
        opt.step()
        mean = loss.detach().clone()
        dist.all_reduce(mean)
        losses.append(mean.item() / world)
    collapsed = net.embedding.collapse().table.weight.detach().clone()  # each process collapses its shards
    local_bytes = net.embedding.table.parameters_bytes() if kind == "single" else net.embedding.inner.parameters_bytes()
    if rank == 0:
        torch.save({"losses": losses, "collapsed": collapsed, "plan": str(dmp.plan), "local_bytes": local_bytes}, out)
    dist.barrier()


if __name__ == "__main__":
    out, kind, sharding, world = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    OPTIMIZER = sys.argv[5] if len(sys.argv) > 5 else "sgd"
    if world == 1:
        native(out, kind)
    else:
        import torch.multiprocessing as mp

        import socket

        with socket.socket() as free:  # a port no other process holds (a fixed formula can collide)
            free.bind(("127.0.0.1", 0))
            port = free.getsockname()[1]
        mp.spawn(sharded, args=(world, out, kind, sharding, port, OPTIMIZER), nprocs=world)
