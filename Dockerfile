# Loom's image: the service and its Python client in a virtualenv, run as a
# non-root user, with the embedding model inside (no download at start).
#
#   docker build -t loom:0.1.0 .
#   docker run -e LOOM_MONGODB_URI=... -e LOOM_LLM_API_KEY=... -p 50051:50051 loom:0.1.0
#
# deploy/compose.yaml runs a fleet of it; deploy/k8s/ has the Kubernetes
# manifests. tests/test_deploy.py runs this file's ENTRYPOINT and HEALTHCHECK
# commands in the development venv (no container engine is needed for that).

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/loom
ENV PATH=/opt/loom/bin:$PATH
WORKDIR /src
# The dependencies first, so that a change to the code alone reuses this layer.
COPY pyproject.toml ./
RUN python -c "import tomllib; print(*tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies'], sep='\n')" > requirements.txt \
 && pip install -r requirements.txt
COPY README.md ./
COPY service/ service/
COPY generated/ generated/
COPY clients/python/ clients/python/
RUN pip install --no-deps . ./clients/python
# all-MiniLM-L6-v2, fetched once here by Loom's own download (Chroma's URL and checksum).
RUN python -c "import shutil; from service.memory.embeddings import ensure_default_model; shutil.copytree(ensure_default_model(), '/opt/loom-model')"

FROM python:3.11-slim
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/loom --create-home loom
COPY --from=build /opt/loom /opt/loom
COPY --from=build /opt/loom-model /opt/loom-model
# LOOM_LISTEN is the wildcard address, so Loom refuses to start in plaintext
# unless the deployment chooses: LOOM_TLS_CERT and LOOM_TLS_KEY (files mounted
# from a secret), or LOOM_ALLOW_PLAINTEXT=true behind a mesh that carries TLS
# (deploy/compose.yaml and deploy/k8s do the latter).
ENV PATH=/opt/loom/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    ORT_DISABLE_TELEMETRY=1 \
    LOOM_LISTEN=0.0.0.0:50051 \
    LOOM_DATA_DIR=/var/lib/loom \
    LOOM_EMBEDDING_MODEL_DIR=/opt/loom-model
USER 10001:10001
WORKDIR /var/lib/loom
EXPOSE 50051
# grpc.health.v1 through the served port; the start period covers loading the model.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-m", "service", "health"]
# SIGTERM drains streams in flight for LOOM_SHUTDOWN_GRACE seconds, then exits.
STOPSIGNAL SIGTERM
ENTRYPOINT ["python", "-m", "service"]
