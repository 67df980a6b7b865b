# CPU image. The service issue turns the entry point into `engine-serve`; a CUDA variant swaps the base for
# nvidia/cuda + a CUDA build of torch.
FROM python:3.11-slim
RUN pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
WORKDIR /app
COPY pyproject.toml README.md ./
COPY engine engine
COPY server server
COPY kernels kernels
COPY clients clients
COPY checkpoints checkpoints
RUN pip install --no-cache-dir . && useradd --create-home app
USER app
ENTRYPOINT ["engine-solve"]
