"""One MLflow client factory with capped HTTP retries, for every module that reads or writes MLflow runs."""

from __future__ import annotations

import os


def mlflow_client(uri: str):
    """An ``MlflowClient`` for ``uri``; an unreachable server fails after one retry and 10 s, not minutes."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)
