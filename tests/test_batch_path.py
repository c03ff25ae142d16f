"""The host-to-device path: pinned batches, non-blocking copies (checked without a GPU)."""

import torch

from mlet.data import CTRDataModule, SyntheticCTR
from mlet.embeddings import SingleLayerEmbedding
from mlet.models.dlrm import DLRM
from mlet.module import CTRModule


class RecordingTensor(torch.Tensor):
    calls: list = []

    def to(self, *args, **kwargs):
        RecordingTensor.calls.append((args, kwargs))
        return torch.Tensor(self)  # stay on the CPU: only the arguments matter


def test_batches_are_copied_to_the_gpu_without_blocking():
    module = CTRModule(SingleLayerEmbedding([5, 5], 2), DLRM(2, 2, 1, [4], [4]))
    batch = tuple(torch.zeros(3, 2).as_subclass(RecordingTensor) for _ in range(3))
    RecordingTensor.calls.clear()
    module.transfer_batch_to_device(batch, torch.device("cuda", 0), 0)  # Lightning's hook, as the Trainer calls it
    assert len(RecordingTensor.calls) == 3
    assert all(kwargs.get("non_blocking") is True for _, kwargs in RecordingTensor.calls)


def test_loaders_pin_memory_exactly_when_cuda_is_available(monkeypatch):
    dm = CTRDataModule(SyntheticCTR(rows=500, num_fields=2, num_dense=1, max_cardinality=20))
    dm.setup()
    for available in (False, True):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: available)
        assert all(dl.pin_memory is available for dl in (dm.train_dataloader(), dm.val_dataloader()))
