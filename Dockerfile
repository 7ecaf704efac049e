# One image for the API and both kinds of worker.
#   docker compose build                      # torch from pip's default index (CUDA-enabled on Linux x86_64)
#   docker build --build-arg TORCH_INDEX_URL=<the PyTorch CPU wheel index> .   # a slim CPU-only image
FROM python:3.11-slim

ARG TORCH_SPEC=torch==2.13.0
ARG TORCH_INDEX_URL=
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
# torch first, in its own layer: it is by far the largest and changes least often.
RUN if [ -n "$TORCH_INDEX_URL" ]; then pip install "$TORCH_SPEC" --index-url "$TORCH_INDEX_URL"; \
    else pip install "$TORCH_SPEC"; fi
COPY pyproject.toml README.md ./
COPY sr ./sr
COPY api ./api
COPY jobs ./jobs
COPY worker ./worker
RUN pip install . && useradd --create-home --uid 10001 upscaler
USER upscaler

EXPOSE 8000
CMD ["python", "-m", "api"]
