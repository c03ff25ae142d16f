"""CTR models: plain ``nn.Module``s taking embedded fields ``[B, F, d]`` and dense features ``[B, D]``.

Every model is built as ``Model(num_fields=F, embed_dim=d, num_dense=D, **hyperparameters)`` and
returns one logit per row. Models never build or know the type of their embeddings.
"""

from mlet.models.dlrm import DLRM

__all__ = ["DLRM"]
