# CPU image of the trm-engine service: `engine-serve` with the shipped checkpoints, as a non-root user.
#
#   docker build -t trm-engine .
#   docker run --rm -p 8000:8000 trm-engine                     # then: curl localhost:8000/readyz
#   docker run --rm -p 8000:8000 -e TRM_MAX_ROLLOUTS=32 trm-engine --checkpoint /app/checkpoints/sudoku-trm
#
# CUDA variant: the CUDA wheels of torch bring their own CUDA runtime and the triton they pin, so the same slim base
# works; only the wheel index changes, and the container needs a GPU:
#   docker build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu126 -t trm-engine:cuda .
#   docker run --rm --gpus all -p 8000:8000 trm-engine:cuda     # device auto -> cuda: bf16, CUDA graphs, Triton
# Triton compiles a small C driver at its first launch, so a CUDA image also gets gcc (slim has none; without it the
# kernels fall back to the torch references, reported in /v1/models). `TRM_KERNELS=torch` forces the references.

ARG PYTHON=python:3.11-slim

FROM ${PYTHON} AS builder
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
RUN pip install --no-cache-dir torch==2.13.0 --index-url ${TORCH_INDEX}
WORKDIR /src
COPY pyproject.toml README.md ./
COPY engine engine
COPY server server
COPY kernels kernels
COPY clients clients
RUN pip install --no-cache-dir .

FROM ${PYTHON}
RUN useradd --uid 10001 --create-home app
COPY --from=builder /opt/venv /opt/venv
RUN if /opt/venv/bin/python -c "import sys, torch; sys.exit(torch.version.cuda is None)"; then \
        apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev && rm -rf /var/lib/apt/lists/*; \
    fi
COPY --chown=root:root checkpoints /app/checkpoints
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    NUMBA_CACHE_DIR=/tmp/numba-cache \
    TRM_HOST=0.0.0.0 \
    TRM_PORT=8000 \
    TRM_CHECKPOINT_ROOT=/app/checkpoints
WORKDIR /app
USER app
EXPOSE 8000
# slim has no curl: probe liveness with the standard library (/healthz never touches the engine)
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4).status != 200)"]
ENTRYPOINT ["engine-serve"]
