"""CTR models: plain ``nn.Module``s taking embedded fields ``[B, F, d]`` and dense features ``[B, D]``.

The contract every model keeps:

* built as ``Model(num_fields=F, embed_dim=d, num_dense=D, **hyperparameters)``; the trainer
  supplies F, d and D (d read from the embedding module), the config group ``conf/model/``
  supplies the hyperparameters (``_partial_: true``);
* ``forward(embedded[B, F, d], dense[B, D]) -> logits[B]`` (no sigmoid);
* a model never builds embeddings and never knows their type (single-layer, MLET, collapsed);
  it must work for any d >= 1, so no width is derived from d by division;
* dense features are always accepted. Models with a dense path in their paper (DLRM's bottom
  MLP, DCN/DCNv2's ``x0``, Wide & Deep's deep input) keep it; models that interact fields and
  have none (FM, DeepFM, xDeepFM, AutoInt, FiBiNET) see the dense vector as one more field
  ``W x`` (:class:`~mlet.models.layers.DenseField`), and every DNN and first-order term also
  reads the raw dense vector. With D = 0 the extra field disappears.

Models are built of small named parts (``dense_arch``, ``cross_arch``, ``deep_arch``,
``over_arch``, ...); the shared ones live in :mod:`mlet.models.layers`.
"""

from mlet.models.autoint import AutoInt, AutoIntPlus
from mlet.models.dcn import DCN
from mlet.models.dcnv2 import DCNv2
from mlet.models.deepfm import DeepFM
from mlet.models.dlrm import DLRM
from mlet.models.fibinet import FiBiNET
from mlet.models.fm import FM
from mlet.models.lr import LR
from mlet.models.wdl import WDL
from mlet.models.xdeepfm import XDeepFM

__all__ = ["DLRM", "DCN", "DCNv2", "AutoInt", "AutoIntPlus", "XDeepFM", "FiBiNET", "DeepFM", "WDL", "FM", "LR"]
