# One image for the feed API and every batch job / Airflow component of this project.
#   API:      python -m feed_api          (REC_API_HOST=0.0.0.0; see docker-compose.yml)
#   Airflow:  airflow api-server | scheduler | dag-processor | celery worker | db migrate
#   A job:    python -m jobs.<stage> ...  (e.g. python -m jobs.generate_data --scale tiny)
# Everything is wired by environment variables (REC_* and AIRFLOW__*); nothing is baked in but defaults.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    AIRFLOW_HOME=/opt/airflow \
    AIRFLOW__CORE__DAGS_FOLDER=/app/dags \
    AIRFLOW__CORE__LOAD_EXAMPLES=False \
    REC_DATA_DIR=/data \
    NUMBA_CACHE_DIR=/opt/numba-cache

WORKDIR /app

# torch first, alone, from the PyTorch CPU index: the lock pins torch==2.13.0+cpu, which PyPI does not
# serve, and the CPU build is ~10x smaller than the default CUDA one. pip then finds it already installed.
RUN pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu torch==2.13.0

# The rest exactly as locked (constraints.txt), non-editable; the dev extra (pytest, ruff, ...) stays out.
COPY pyproject.toml constraints.txt README.md ./
COPY rec_core ./rec_core
COPY jobs ./jobs
COPY feed_api ./feed_api
RUN pip install --no-cache-dir -c constraints.txt . \
    && python -c "import rec_core.settings, rec_core.stages, airflow.sdk, airflow.providers.celery, psycopg2"

COPY dags ./dags
# Every numba kernel compiled into NUMBA_CACHE_DIR here, so that no container compiles them in its first tasks
# or requests (rec_core/kernels.py).
RUN PYTHONPATH=/app/dags python -c "import rec_dags.stage_tasks" \
    && python -m rec_core.kernels

# An unprivileged user that owns the data root and the Airflow home (logs).
RUN useradd --create-home --uid 50000 --gid 0 rec \
    && mkdir -p /data /opt/airflow/logs /opt/numba-cache \
    && chown -R rec:0 /data /opt/airflow /opt/numba-cache
USER 50000
VOLUME ["/data"]

EXPOSE 3002 8080
CMD ["python", "-m", "feed_api"]
