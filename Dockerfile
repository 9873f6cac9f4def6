# One image for the API and the worker; docker-compose.yml picks the command.
#
# torch==2.14.1 (pinned in pyproject.toml) comes from PyPI, where the x86_64 wheel is the CUDA build: the
# image then trains on an NVIDIA GPU when the container is given one, and on the CPU otherwise. For a much
# smaller CPU-only image, build with
#   docker compose build --build-arg PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu
FROM python:3.11-slim

ARG PIP_EXTRA_INDEX_URL=""
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    GANSERVE_HOST=0.0.0.0 \
    GANSERVE_PORT=8000 \
    GANSERVE_CHECKPOINT_DIR=/data/ganserve \
    GANSERVE_DATA_ROOT=/data/datasets

RUN groupadd --gid 10001 ganserve \
    && useradd --create-home --uid 10001 --gid 10001 --shell /usr/sbin/nologin ganserve \
    && mkdir -p /data/ganserve /data/datasets \
    && chown -R ganserve:ganserve /data

WORKDIR /app

# Dependencies first, from pyproject.toml alone, so that a code change does not reinstall torch.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install --no-cache-dir -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

COPY README.md ./
COPY core ./core
COPY training ./training
COPY worker ./worker
COPY service ./service
COPY ganserve ./ganserve
RUN pip install --no-cache-dir --no-deps .

USER 10001:10001
EXPOSE 8000
VOLUME ["/data/ganserve"]

# The API alone (uvicorn on asyncio's event loop, ganserve/cli/processes.py); docker-compose.yml's workers run
# `ganserve worker` from the same image.
CMD ["ganserve", "api", "--host", "0.0.0.0", "--port", "8000"]
