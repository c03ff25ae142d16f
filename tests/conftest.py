"""Fixtures shared by every test; helpers to import are in :mod:`tests.helpers`."""

from __future__ import annotations

import pytest
import torch
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig

import tests.helpers  # noqa: F401 - registers mlet's resolvers, as mlet-train does

# Tiny tensors: one thread avoids thread start-up costs and keeps the suite steady on a loaded machine.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _clear_hydra():
    yield
    GlobalHydra.instance().clear()
    HydraConfig.instance().cfg = None
