"""Embedding types: all map ``indices[B, F]`` to ``[B, F, d]`` and collapse to their deployed form."""

from mlet.embeddings.base import FieldEmbedding
from mlet.embeddings.hashing import HashEmbedding, HashMLETEmbedding
from mlet.embeddings.mixed_dim import MixedDimEmbedding, MixedDimMLETEmbedding
from mlet.embeddings.mlet import LowRankEmbedding, MLETEmbedding
from mlet.embeddings.qr import QREmbedding
from mlet.embeddings.single import SingleLayerEmbedding
from mlet.embeddings.tt import TTEmbedding

__all__ = [
    "FieldEmbedding", "HashEmbedding", "HashMLETEmbedding", "LowRankEmbedding", "MLETEmbedding",
    "MixedDimEmbedding", "MixedDimMLETEmbedding", "QREmbedding", "SingleLayerEmbedding", "TTEmbedding",
]
