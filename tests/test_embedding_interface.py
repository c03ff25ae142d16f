"""The embedding interface (mlet.embeddings.base): what every type declares about itself."""

from __future__ import annotations

import pytest
import torch

from mlet.embeddings import FieldEmbedding, LowRankEmbedding, MLETEmbedding, SingleLayerEmbedding
from mlet.embeddings.base import embedding_class

CARDS = [5, 7, 3]


def test_arm_and_label_from_the_instance_equal_those_from_the_config():
    for emb, cfg, label in (
        (SingleLayerEmbedding(CARDS, 4, inner_dim=32), {"dim": 4, "inner_dim": 32}, "single"),
        (MLETEmbedding(CARDS, 4, 16), {"dim": 4, "inner_dim": 16}, "mlet k=16"),
        (LowRankEmbedding(CARDS, 4, 2), {"dim": 4, "inner_dim": 2}, "lowrank k=2"),
    ):
        assert emb.arm() == type(emb).arm_of(cfg)
        assert emb.label() == type(emb).label_of(emb.arm()) == label
    assert SingleLayerEmbedding(CARDS, 4).arm() == {"kind": "single", "dim": 4}  # an ignored key is no arm key
    assert MLETEmbedding(CARDS, 4, 16).arm() == {"kind": "mlet", "dim": 4, "inner_dim": 16}


def test_config_problem_is_the_constructors_error():
    assert MLETEmbedding.config_problem({"dim": 8, "inner_dim": 8}) is None
    assert LowRankEmbedding.config_problem({"dim": 8, "inner_dim": 4}) is None
    assert SingleLayerEmbedding.config_problem({"dim": 8, "inner_dim": 4}) is None
    for cls, k in ((MLETEmbedding, 4), (LowRankEmbedding, 8)):
        problem = cls.config_problem({"dim": 8, "inner_dim": k})
        assert problem and "embedding.inner_dim" in problem and "\n" not in problem
        with pytest.raises(ValueError) as err:
            cls(CARDS, 8, k)
        assert str(err.value) == problem


def test_sizes_in_parameters_and_bytes():
    single, mlet = SingleLayerEmbedding(CARDS, 4), MLETEmbedding(CARDS, 4, 16)
    n = sum(CARDS)
    assert single.train_bytes == single.inference_bytes == n * 4 * 4  # float32
    assert mlet.train_bytes == (n * 16 + 3 * 16 * 4) * 4
    assert mlet.inference_bytes == single.inference_bytes
    assert mlet.collapse().train_bytes == mlet.inference_bytes
    half = SingleLayerEmbedding(CARDS, 4).to(torch.float16)
    assert half.inference_bytes == n * 4 * 2


def test_embedding_class_from_a_target():
    assert embedding_class("mlet.embeddings.MLETEmbedding") is MLETEmbedding
    assert embedding_class("mlet.embeddings.mlet.LowRankEmbedding") is LowRankEmbedding
    assert embedding_class("torch.nn.Linear") is None  # not an embedding type
    assert embedding_class("no.such.Module") is None
    assert issubclass(embedding_class("mlet.embeddings.SingleLayerEmbedding"), FieldEmbedding)


def test_sweep_names_and_skips_by_the_class(tmp_path):
    from mlet import sweep
    from tests.helpers import compose_cfg

    toy = ["embedding=single", "embedding._target_=tests.helpers.toy.ToyHashEmbedding", "+embedding.buckets=8"]
    cfg = compose_cfg([*toy, "embedding.dim=4"], tmp_path)
    assert sweep.arm(cfg) == {"kind": "toyhash", "dim": 4, "buckets": 8}
    # the class swapped by an override: named by its arm keys and hashed, never the single-layer job's name
    assert sweep.job_dir_name(cfg).startswith("synthetic-dlrm-single-d4-buckets8-s0-")
    assert sweep.job_dir_name(compose_cfg(["embedding=single", "embedding.dim=4"], tmp_path)) == \
        "synthetic-dlrm-single-d4-s0"
    bad = compose_cfg([*toy[:2], "+embedding.buckets=0"], tmp_path)
    assert sweep.skip_reason(bad, tmp_path / "job") is None  # outside a multirun the constructor fails instead
