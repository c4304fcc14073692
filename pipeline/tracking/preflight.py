"""Before a run starts: does the MLflow server accept our credentials for the job's experiment?

Tracking is never fatal to a run: an unreachable server only costs a warning at the end and a later
``starkv-eval sync``. A server that answers "401 Unauthorized" or "403 Forbidden" is different: it is
up, and every write of the run would be refused for a reason only the person starting the run can fix
(a wrong MLFLOW_TRACKING_PASSWORD, a user without access). That is reported before any work starts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from urllib.parse import urlsplit

#: The endpoint the preflight asks: authenticated on a basic-auth server, and gated on READ of the
#: experiment when it exists (404 when it does not: the credentials were accepted all the same).
PROBE_ENDPOINT = "/api/2.0/mlflow/experiments/get-by-name"


class TrackingAuthError(Exception):
    """The MLflow server refused the run's credentials (HTTP 401) or access (HTTP 403)."""


@dataclass(frozen=True)
class ProbeResult:
    """What the server answered the preflight probe.

    Attributes
    ----------
    status : int | None
        The HTTP status, or None when the server could not be reached.
    detail : str
        The first line of the response body, or the connection error.
    """

    status: int | None
    detail: str


def credentials_source() -> str:
    """Where the MLflow client takes its username/password from, in words for an error message."""
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if user or password:
        return (f"the username '{user or ''}' and password from MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD"
                + ("" if password else " (MLFLOW_TRACKING_PASSWORD is not set)"))
    if os.environ.get("MLFLOW_TRACKING_TOKEN"):
        return "the token from MLFLOW_TRACKING_TOKEN"
    from mlflow.utils.credentials import read_mlflow_creds

    creds = read_mlflow_creds()  # ~/.mlflow/credentials
    if creds.username:
        return f"the username '{creds.username}' and password from ~/.mlflow/credentials"
    return "no credentials (set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD)"


def probe(uri: str, experiment: str) -> ProbeResult:
    """Ask the server for ``experiment`` with the credentials the MLflow client would send.

    One try, within ``MLFLOW_HTTP_REQUEST_TIMEOUT`` seconds (10 unless set): the same cap the tracker uses.
    """
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")  # the tracker's own caps (client.py)
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    try:
        resp = http_request(get_default_host_creds(uri), PROBE_ENDPOINT, "GET", max_retries=0,
                            timeout=float(os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"]),
                            params={"experiment_name": experiment})
    except Exception as err:  # noqa: BLE001 - unreachable in any way: the run goes on, tracking warns later
        return ProbeResult(None, f"{type(err).__name__}: {err}".splitlines()[0])
    body = (resp.text or "").strip().splitlines()
    return ProbeResult(resp.status_code, body[0][:200] if body else "")


def check_tracking_access(uri: str, experiment: str) -> ProbeResult | None:
    """Raise ``TrackingAuthError`` (one line) if an ``http(s)://`` tracking server refuses this run.

    Local stores (``sqlite:///``, folders) have no credentials and are not probed (None). An unreachable
    server passes: tracking stays non-fatal, the run's end warns and ``starkv-eval sync`` fills MLflow later.
    """
    if urlsplit(uri).scheme not in {"http", "https"}:
        return None
    result = probe(uri, experiment)
    if result.status == 401:
        raise TrackingAuthError(
            f"MLflow server {uri} refused {credentials_source()} (HTTP 401 Unauthorized); "
            "fix the credentials before running")
    if result.status == 403 and "host header" in result.detail.lower():  # MLflow's DNS-rebinding guard
        raise TrackingAuthError(
            f"MLflow server {uri} rejected the host name (HTTP 403: {result.detail}); add "
            f"'{urlsplit(uri).netloc}' to the server's --allowed-hosts")
    if result.status == 403:
        user = os.environ.get("MLFLOW_TRACKING_USERNAME") or "(no user)"
        raise TrackingAuthError(
            f"MLflow server {uri} denied user '{user}' access to experiment '{experiment}' "
            f"(HTTP 403: {result.detail or 'Forbidden'}); grant the user READ/EDIT on it or use another account")
    return result
