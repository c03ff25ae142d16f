"""Data: raw formats -> features -> cache (:class:`CTRArrays`) -> batches (:class:`CTRDataModule`)."""

from mlet.data.arrays import CTRArrays, Split
from mlet.data.datamodule import CTRDataModule
from mlet.data.synthetic import SyntheticCTR

__all__ = ["CTRArrays", "CTRDataModule", "Split", "SyntheticCTR"]
