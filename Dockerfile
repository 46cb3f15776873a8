# GPU image: CUDA build of torch from the PyTorch base image, plus med3d and its dependencies.
#   docker build -t med3d .
#   docker run --gpus all -v /data:/data med3d med3d-train pretrain /data/store --out /data/runs/r50 --depth 50 --device cuda
#   docker run --gpus all --ipc=host -v /data:/data med3d torchrun --nproc-per-node 4 -m model.cli pretrain ...
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /opt/med3d
# The project as a whole: every package pyproject.toml installs (pipeline, catalog, model, runlog, volume), the
# README it names, and tests/ and benchmarks/ to run on the GPU; .dockerignore leaves out what belongs to one
# checkout (.git, .venv, data/, runs/, build output, caches). tests/test_dockerfile.py builds these files.
COPY . .
# torch>=2.4 is already satisfied by the base image's CUDA build, so pip keeps it.
RUN pip install ".[bench]" && python -c "import torch, SimpleITK, zarr, dask; print(torch.__version__, torch.version.cuda)"
WORKDIR /work
CMD ["med3d-train", "--help"]
