#!/usr/bin/env bash
# The TorchRec backend (embedding.backend=torchrec) into the active environment, after `pip install -e .`:
#   bash scripts/install_torchrec.sh
# Why a script and not an extra (`pip install -e '.[torchrec]'`): torchrec 1.8.0 declares the CUDA
# fbgemm-gpu (1.9.0, built for another torch: its fbgemm_gpu_config.so fails to load) and
# torchmetrics==1.0.3, which would replace this project's torch==2.13.0 and torchmetrics==1.9.0.
# An extra cannot say --no-deps, so torchrec and FBGEMM's CPU build (it runs on GPUs' hosts too; on a
# GPU machine install fbgemm-gpu==1.8.0 built for your CUDA instead) come without their declared
# dependencies, and their light dependencies are listed here, pinned.
set -euo pipefail
python -m pip install -q --no-deps \
    torchrec==1.8.0 fbgemm-gpu-cpu==1.8.0 \
    tensordict==0.15.3 pyvers==0.2.3 cloudpickle==3.1.3 \
    pyre-extensions==0.0.32 typing-inspect==0.9.0 mypy-extensions==1.2.0
python -c "import torch, torchmetrics, torchrec.distributed, fbgemm_gpu; print(f'torchrec backend ready: torch {torch.__version__}, torchmetrics {torchmetrics.__version__}')"
