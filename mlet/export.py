"""``mlet-export``: the deployable, collapsed model of a run.

Every MLET pair ``A_f B_f`` is replaced by its ``n_f x d`` product, so the exported network is a
single-layer model of dimension d (a reduced type exports its deployed form: hashed, QR, TT or
mixed-dimension tables). A run with ``quantize=fp16|int8|int4`` exports its quantised tables (codes,
float16 scales and biases, dequantised inside the program), the model its evaluation scored. It is written with ``torch.export`` (``model.pt2``, batch size
dynamic) beside a ``model.json`` holding the data schema, the data config (so ``mlet-predict`` can
parse raw files of the run's format), the sizes and the ``vocabulary`` entry. For a run on a
file-backed source (:class:`mlet.data.pipeline.PreparedSource`) the run's vocabulary is copied
from its data cache to ``vocab.npy``: for each categorical field in order, the raw key (the
pipeline's int64 encoding of the category) of every index ``1..n_f-1``; index 0 is OOV. Field
``f``'s keys are ``vocab[offsets[f]:offsets[f] + cardinalities[f] - 1]``. Synthetic runs have no
raw format and no vocabulary (``"vocabulary": null``).

    mlet-export outputs/runs/<run>                 # best checkpoint of the run
    mlet-export outputs/runs/<run>/checkpoints/last.ckpt --out exported/
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch
from omegaconf import OmegaConf

from mlet.embeddings import SingleLayerEmbedding
from mlet.module import CTRNet
from mlet.cli import command
from mlet.errors import MletError
from mlet.records import RECORD_NAME, read_record, write_json

EXPORT_NAME = "model.pt2"
SPEC_NAME = "model.json"
VOCAB_NAME = "vocab.npy"


class ExportError(MletError):
    """A run folder or checkpoint that cannot be exported."""


def locate(target: str | Path) -> tuple[Path, Path]:
    """(run dir, checkpoint) for a run dir or a checkpoint inside one."""
    from mlet.torchrec_strategy import is_sharded_checkpoint

    target = Path(target)
    if target.is_file() or is_sharded_checkpoint(target):  # a file, or a sharded (torchrec) checkpoint
        run_dir = target.parent.parent if target.parent.name == "checkpoints" else target.parent
        return run_dir, target
    if not target.is_dir():
        raise ExportError(f"{target}: no such run directory or checkpoint")
    record = target / RECORD_NAME
    dropped = False
    if record.is_file():
        try:
            run = read_record(record)
        except ValueError as exc:
            raise ExportError(str(exc)) from None
        if run.best_checkpoint and Path(run.best_checkpoint).exists():  # a file, or a sharded checkpoint directory
            return target, Path(run.best_checkpoint)
        dropped = (run.config or {}).get("keep_best_checkpoint") is False
    last = target / "checkpoints" / "last.ckpt"
    if last.exists():
        return target, last
    hint = ("; it was trained with keep_best_checkpoint=false (a sweep preset's setting): train it again with "
            "keep_best_checkpoint=true force=true" if dropped else "")
    raise ExportError(f"{target}: no checkpoint found (record.json's best_checkpoint or checkpoints/last.ckpt){hint}")


def load_collapsed(target: str | Path) -> tuple[CTRNet, dict, Path]:
    """The collapsed network of a run (eval mode, CPU), its run spec, and the checkpoint used."""
    from mlet.job import build_module  # the same builder as training: one way to make a module

    run_dir, ckpt = locate(target)
    for name in ("config.yaml", "schema.json"):
        if not (run_dir / name).is_file():
            raise ExportError(f"{run_dir / name}: missing; it is written when a run starts")
    cfg = OmegaConf.load(run_dir / "config.yaml")
    try:
        schema = json.loads((run_dir / "schema.json").read_text())
        cardinalities, dense_names = schema["cardinalities"], schema["dense_names"]
    except (ValueError, KeyError) as exc:
        raise ExportError(f"{run_dir / 'schema.json'}: not a run's data schema ({type(exc).__name__}: {exc})") from None
    from mlet.torchrec_strategy import is_sharded_checkpoint, native_state_dict

    sharded = is_sharded_checkpoint(ckpt)
    if sharded:  # embedding.backend=torchrec: read the shards into the native network (same program)
        cfg.embedding.backend = "native"
    module = build_module(cfg, cardinalities, len(dense_names))
    try:
        state = (native_state_dict(ckpt) if sharded
                 else torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"])
    except Exception as exc:  # noqa: BLE001 - torch.load fails in many ways on a file that is no checkpoint
        raise ExportError(f"{ckpt}: not a readable Lightning checkpoint ({type(exc).__name__}: {exc})") from None
    try:
        module.load_state_dict(state)
    except RuntimeError as exc:
        raise ExportError(f"{ckpt}: its weights do not fit the run's config.yaml and schema.json "
                          f"({str(exc).splitlines()[0]})") from None
    # the deployed net: collapsed, quantised as the run's quantize says (what its evaluation scored)
    net = module.net.deployed(module.deployed_embedding()).eval()
    spec = {"schema": schema, "data": OmegaConf.to_container(cfg.data, resolve=True),
            "embedding": module.embedding.kind, "dim": module.embedding.dim,
            "arm": module.embedding.arm(), "label": module.embedding.label(), "quantize": module.quantize,
            "embedding_inference_parameters": module.embedding.inference_parameters,
            "embedding_inference_bytes": module.inference_bytes, "model_bytes": module.model_bytes}
    return net, spec, ckpt


def data_source(data_cfg: dict, **overrides):
    """The run's data source, instantiated from its resolved data config (``_target_`` and
    arguments) with ``overrides``, building nothing; ``None`` for a source without raw files."""
    from hydra.utils import get_class

    from mlet.data.pipeline import PreparedSource

    cls = get_class(data_cfg["_target_"])
    if not (isinstance(cls, type) and issubclass(cls, PreparedSource)):
        return None
    kwargs = {k: v for k, v in data_cfg.items() if k != "_target_"}
    return cls(**{**kwargs, "progress": False, **overrides})


def copy_vocabulary(data_cfg: dict, schema: dict, out: Path) -> dict | None:
    """Copy the run's vocabulary from its data cache into ``out``; its description for
    ``model.json`` (``None`` when the run's data has no raw format, e.g. synthetic)."""
    import numpy as np

    source = data_source(data_cfg)
    if source is None:
        return None
    try:
        cache = source.cache_path
    except FileNotFoundError as exc:
        raise ExportError(f"cannot locate the run's data cache: {exc}") from None
    meta_path, vocab_path = cache / "meta.json", cache / VOCAB_NAME
    if not meta_path.is_file() or not vocab_path.is_file():
        raise ExportError(f"the run's data cache {cache} is gone (no meta.json / {VOCAB_NAME}); it holds the "
                          "vocabulary prediction needs: prepare it again with the run's data config (mlet-prepare "
                          "data=... with the same options) and export again")
    meta = json.loads(meta_path.read_text())
    cards = [int(c) for c in meta["cardinalities"]]
    if cards != [int(c) for c in schema["cardinalities"]] or meta["cat_names"] != schema["cat_names"]:
        raise ExportError(f"the data cache {cache} does not match the run's schema.json (fields or cardinalities)")
    vocab = np.load(vocab_path, mmap_mode="r")
    if len(vocab) != sum(c - 1 for c in cards):
        raise ExportError(f"{vocab_path}: {len(vocab)} keys where the cardinalities give {sum(c - 1 for c in cards)}")
    shutil.copyfile(vocab_path, out / VOCAB_NAME)
    offsets = np.concatenate([[0], np.cumsum([c - 1 for c in cards])[:-1]]).astype(int).tolist() if cards else []
    return {
        "file": VOCAB_NAME,
        "fields": list(meta["cat_names"]),
        "cardinalities": cards,
        "offsets": offsets,
        "oov_index": 0,
        "layout": "int64 keys; field f's key of index i (1..cardinality-1) is vocab[offsets[f] + i - 1]; "
                  "keys not in a field's vocabulary map to the OOV index 0",
        "keys": f"the {type(source).__name__} parser's int64 encoding of raw categories",
        "cache": str(cache),
    }


def export(target: str | Path, out: str | Path | None = None) -> dict:
    net, spec, ckpt = load_collapsed(target)
    out = Path(out) if out else locate(target)[0] / "export"
    out.mkdir(parents=True, exist_ok=True)
    schema = spec["schema"]
    vocabulary = copy_vocabulary(spec["data"], schema, out)  # first: a missing cache fails fast
    n_dense, n_fields = len(schema["dense_names"]), len(schema["cardinalities"])
    example = (torch.zeros(2, n_dense), torch.zeros(2, n_fields, dtype=torch.long))
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(net, example, dynamic_shapes={"dense": {0: batch}, "cat": {0: batch}})
    torch.export.save(program, out / EXPORT_NAME)

    embedding_params = spec.pop("embedding_inference_parameters")  # the embedding class states its deployed size
    embedding_bytes = spec.pop("embedding_inference_bytes")
    reference = SingleLayerEmbedding(schema["cardinalities"], spec["dim"])
    sizes = {
        "embedding_parameters": embedding_params,
        "embedding_bytes": embedding_bytes,
        "model_bytes": spec.pop("model_bytes"),
        "single_layer_embedding_parameters": sum(p.numel() for p in reference.parameters()),
        "model_parameters": sum(p.numel() for p in net.parameters()) - embedding_params,
        "file_bytes": (out / EXPORT_NAME).stat().st_size,
    }
    spec = {**spec, "checkpoint": str(ckpt), "sizes": sizes, "inputs": ["dense[B, D] float32", "cat[B, F] int64"],
            "vocabulary": vocabulary}
    if vocabulary is None:
        spec["vocabulary_note"] = (f"{spec['data'].get('_target_')} has no raw file format: inputs are already "
                                   "category indices (no vocabulary; mlet-predict does not apply)")
    write_json(out / SPEC_NAME, spec)
    return spec


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mlet-export", description=__doc__.split("\n\n")[0])
    parser.add_argument("target", help="a run directory or a checkpoint file inside one")
    parser.add_argument("--out", help="output directory (default: <run dir>/export)")
    args = parser.parse_args(argv)
    return command("mlet-export", _export_command, args)


def _export_command(args: argparse.Namespace) -> int:
    spec = export(args.target, args.out)
    s = spec["sizes"]
    out = Path(args.out) if args.out else locate(args.target)[0] / "export"
    print(f"exported {spec['embedding']} d={spec['dim']} (collapsed) from {spec['checkpoint']} to {out}")
    print(f"  embedding parameters: {s['embedding_parameters']:,} "
          f"(a single-layer embedding of d={spec['dim']}: {s['single_layer_embedding_parameters']:,})")
    print(f"  deployed embedding: {s['embedding_bytes']:,} bytes (quantize={spec['quantize']}); "
          f"whole model: {s['model_bytes']:,} bytes")
    print(f"  model parameters: {s['model_parameters']:,}; file: {s['file_bytes']:,} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
