# syntax=docker/dockerfile:1.7
# MLflow tracking server with the PostgreSQL driver (backend store), boto3 (optional S3 artifacts) and
# the `auth` extra (Flask-WTF), which `mlflow server --app-name basic-auth` needs for CSRF checks.
# Name (single source of truth: infra/images.yaml); the tag is the MLflow version:
#   ghcr.io/starkv-eval/mlflow:3.17.2
# Build (the context needs no files):
#   docker build -f infra/docker/mlflow.Dockerfile -t ghcr.io/starkv-eval/mlflow:3.17.2 infra/docker
FROM python:3.11-slim-bookworm

# 3.17.2, not 3.18.0: mlflow 3.18.0 pins an mlflow-skinny that was never published.
ARG MLFLOW_VERSION=3.17.2
ARG PSYCOPG2_VERSION=2.9.13
ARG BOTO3_VERSION=1.44.8

RUN pip install --no-cache-dir --disable-pip-version-check \
        "mlflow[auth]==${MLFLOW_VERSION}" "psycopg2-binary==${PSYCOPG2_VERSION}" "boto3==${BOTO3_VERSION}" \
 && useradd --uid 1000 --create-home --shell /usr/sbin/nologin mlflow

USER 1000
WORKDIR /home/mlflow
EXPOSE 5000
ENTRYPOINT ["mlflow"]
CMD ["server", "--host", "0.0.0.0", "--port", "5000"]
