# syntax=docker/dockerfile:1
# textinv on an NVIDIA GPU: the gRPC server with the tensorrt (or torch) backend.
# Build:  docker build -t textinv:latest .
# Run:    see docs/DEPLOYMENT.md (export, then the engine build on the target GPU, then serve).
#
# The base carries CUDA, cuDNN and TensorRT 10 with its Python bindings; its Python is 3.10+.
ARG BASE_IMAGE=nvcr.io/nvidia/tensorrt:24.10-py3

# -- stage 1: build the gRPC stubs and the two wheels (textinv-client, textinv) -----------------
FROM ${BASE_IMAGE} AS build
WORKDIR /src
RUN python3 -m pip install --no-cache-dir "grpcio-tools>=1.85.1,<1.86" "setuptools>=77" wheel
COPY pyproject.toml README.md ./
COPY proto/ proto/
COPY scripts/protos.py scripts/protos.py
COPY textinv/ textinv/
COPY export/ export/
COPY server/ server/
COPY client/ client/
# Generate the stubs from the .proto contract (never hand-edited) into the client package.
RUN python3 scripts/protos.py
RUN python3 -m pip wheel --no-cache-dir --no-deps --wheel-dir /wheels ./client .

# -- stage 2: the runtime -----------------------------------------------------------------------
FROM ${BASE_IMAGE} AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1
COPY --from=build /wheels /wheels
# textinv[gpu]: torch (CUDA build), diffusers, onnxruntime-gpu, tensorrt (the base's, if it fits).
RUN python3 -m pip install --no-cache-dir /wheels/textinv_client-*.whl \
        "$(ls /wheels/textinv-[0-9]*.whl)[gpu]" \
    && rm -rf /wheels
RUN groupadd --system --gid 10001 textinv \
    && useradd --system --uid 10001 --gid textinv --create-home --home-dir /home/textinv textinv \
    && mkdir -p /data /engines /models \
    && chown textinv:textinv /data /engines
# The state folder (concepts, jobs) and the engine cache outlive the container.
VOLUME ["/data", "/engines"]
USER textinv
WORKDIR /home/textinv
# 50051: gRPC (generation, concepts, jobs, health, reflection). 9090: Prometheus /metrics.
EXPOSE 50051 9090
# The standard grpc.health.v1 service: SERVING only after the model is loaded and warmed up.
HEALTHCHECK --interval=30s --timeout=5s --start-period=300s --retries=3 \
    CMD ["python3", "-m", "textinv_client.health", "127.0.0.1:50051", "--timeout", "4"]
ENTRYPOINT ["textinv", "serve"]
CMD ["--host", "0.0.0.0", "--port", "50051", "--metrics-port", "9090", "--data", "/data"]
