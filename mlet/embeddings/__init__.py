"""Embedding types: all map ``indices[B, F]`` to ``[B, F, d]`` and collapse to a single-layer table."""

from mlet.embeddings.base import FieldEmbedding
from mlet.embeddings.mlet import LowRankEmbedding, MLETEmbedding
from mlet.embeddings.single import SingleLayerEmbedding

__all__ = ["FieldEmbedding", "LowRankEmbedding", "MLETEmbedding", "SingleLayerEmbedding"]
