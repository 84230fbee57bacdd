# ShardLab: the app and the engine in one image, served by a non-root user, runs kept on a volume.
#
#   CPU:  docker build -t shardlab .
#   GPU:  docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 -t shardlab:cuda .
#   run:  docker run -p 127.0.0.1:8501:8501 -v shardlab-runs:/data shardlab            (add --gpus all for CUDA)
#
# The two builds differ only in the torch wheel: TORCH_INDEX_URL is an extra index that offers torch==2.13.0
# built for CPU (the default) or for a CUDA version your driver supports (cuXYZ). The CUDA wheels bring their
# own CUDA runtime and NCCL, so the same slim base serves both; the host's driver (and NVML) comes in through
# the NVIDIA container toolkit (`--gpus all`). Same user, same volume, same entry in both.
FROM python:3.11-slim

ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# A fixed uid, so a bind-mounted runs folder can be chowned to it on the host (chown 10001 ./runs).
RUN groupadd --gid 10001 shardlab \
    && useradd --create-home --uid 10001 --gid 10001 --shell /usr/sbin/nologin shardlab

WORKDIR /app
COPY requirements.txt .
RUN python -m pip install --no-cache-dir --extra-index-url "${TORCH_INDEX_URL}" -r requirements.txt
# Code stays owned by root (the server cannot rewrite itself); only the runs volume is the user's.
COPY . .
RUN mkdir -p /data/runs && chown -R 10001:10001 /data

ENV SHARDLAB_RUNS_DIR=/data/runs \
    STREAMLIT_SERVER_PORT=8501 \
    STREAMLIT_SERVER_HEADLESS=true \
    STREAMLIT_BROWSER_GATHER_USAGE_STATS=false \
    STREAMLIT_SERVER_ENABLE_CORS=true \
    STREAMLIT_SERVER_ENABLE_XSRF_PROTECTION=true \
    STREAMLIT_SERVER_MAX_UPLOAD_SIZE=5 \
    STREAMLIT_SERVER_FILE_WATCHER_TYPE=none
# The deliberate bind for containers: outside a container the app listens on 127.0.0.1 only
# (.streamlit/config.toml), but Docker's port publishing cannot reach a container's loopback, so inside
# the image the server listens on every interface of the container and SHARDLAB_ALLOW_REMOTE=1 says that
# this is on purpose. Who can connect is decided by how the port is published: -p 127.0.0.1:8501:8501
# keeps it on the host's loopback; a bare -p 8501:8501 opens it to the network (no login: anyone who
# reaches it can start jobs).
# browser.serverAddress names the address users browse to (localhost through the published port); set, it
# also stops Streamlit from asking an internet service for this machine's external IP at startup.
ENV STREAMLIT_SERVER_ADDRESS=0.0.0.0 \
    STREAMLIT_BROWSER_SERVER_ADDRESS=localhost \
    SHARDLAB_ALLOW_REMOTE=1

USER 10001:10001
VOLUME /data
EXPOSE 8501
# Slim images have no curl: Python's urllib asks Streamlit's own health endpoint, which answers "ok".
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; url = 'http://127.0.0.1:%s/_stcore/health' % os.environ['STREAMLIT_SERVER_PORT']; assert urllib.request.urlopen(url, timeout=4).read() == b'ok'"]
CMD ["python", "-m", "streamlit", "run", "app/shardlab.py"]
