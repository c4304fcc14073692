"""The MLflow UI in a real browser: the link a run prints opens a comparable view without any clicking.

A run folder with three compressors at three budgets (no model needed) is synced to a fresh store with
``starkv-eval sync``; ``mlflow ui`` serves it on loopback and headless Chromium (Playwright driving the Debian
``chromium``) opens the printed link. The Runs table must show the key metric columns in model-training mode,
and the chart view one line chart over the budget per key metric, with one line per compressor.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from pipeline.cli import main
from tests.helpers_runs import MIB, step_row, write_run_folder
from tests.tools.mlflow_screenshots import (
    HOST,
    default_mlflow,
    port_free,
    start_server,
    stop_server,
    wait_ready,
)

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("isolated_mlflow")]

COMPRESSORS = ("full", "snapkv", "starkv")
BUDGETS = (10.0, 20.0, 50.0)
#: the Runs-table columns the link must show (the unit runs' metric names)
COLUMNS = ("accuracy", "accuracy_ci_low", "accuracy_ci_high", "kv_ratio_pct", "max_own_peak_above_weights_mib",
           "mean_prefill_ms", "mean_decode_ms")
CHROMIUM_PATHS = ("/usr/lib/chromium/chromium", "/usr/bin/chromium", "/usr/bin/chromium-browser")


def chromium() -> str:
    """A Chromium binary: ``STARKV_CHROMIUM``, the Debian one, or installed now with apt (as root); skips only
    where none can be installed."""
    def found() -> str | None:
        named = os.environ.get("STARKV_CHROMIUM")
        if named:
            return named if Path(named).is_file() else None
        return next((p for p in CHROMIUM_PATHS if Path(p).is_file()), None) or shutil.which("chromium")

    if found():
        return found()
    apt = shutil.which("apt-get")
    if apt and os.geteuid() == 0:
        subprocess.run([apt, "install", "-y", "-q", "chromium"], capture_output=True, timeout=900, check=False)
        if found():
            return found()
    pytest.skip("no Chromium: none of STARKV_CHROMIUM, " + ", ".join(CHROMIUM_PATHS) + " and `apt-get install "
                f"chromium` {'failed' if apt and os.geteuid() == 0 else 'needs apt-get as root'} (`make browser`)")


def free_port() -> int:
    return next(p for p in range(5090, 5190) if port_free(p))


def job_output(output: Path, run_id: str = "browser-1") -> Path:
    """2 episodes x 3 steps per unit; a compressor keeps ``budget`` % of the KV and gets more steps right with
    more budget (full: all kept, 5 of 6 right)."""
    config = {"name": "browser", "model": {"path": "tiny"},
              "benchmark": {"name": "synthetic", "options": {"num_episodes": 2, "seed": 0}},
              "compressors": [{"name": c} for c in COMPRESSORS], "budgets": list(BUDGETS),
              "tracking": {"experiment": "browser-test"}}
    rows = []
    for c in COMPRESSORS:
        for budget in BUDGETS:
            keep = 1.0 if c == "full" else budget / 100
            right = 5 if c == "full" else 1 + BUDGETS.index(budget)
            for e, ep in enumerate(("ep0", "ep1")):
                for step in range(3):
                    key = f"{c}@{budget:g}"
                    rows.append(step_row(run_id, c, budget, step, episode_id=ep, step_key=f"{key}/{ep}/{step}",
                                         correct=3 * e + step < right, kv_bytes=int(8 * MIB * keep),
                                         kv_bytes_full=8 * MIB, peak_above_weights_bytes=int(40 * MIB * keep)))
    return write_run_folder(output, run_id, config, rows)


def test_printed_link_opens_key_columns_and_budget_charts(tmp_path, capsys):
    from playwright.sync_api import sync_playwright

    binary = chromium()
    output = tmp_path / "out"
    job_output(output)
    assert main(["sync", str(output)]) == 0
    assert main(["sync", str(output)]) == 0  # idempotent: the view and the lines stay as they were
    (link, _again) = re.findall(r"open (http://\S+)", capsys.readouterr().out)
    assert "workflowType=machine_learning" in link and "viewStateShareKey=" in link

    port = free_port()
    served = tmp_path / "served"
    served.mkdir()
    shutil.copy2(output / "mlflow.db", served / "mlflow.db")
    log = tmp_path / "mlflow-ui.log"
    proc = start_server(default_mlflow(), served / "mlflow.db", port, log)
    base = f"http://{HOST}:{port}"
    try:
        wait_ready(proc, base, 400, log)
        url = link.replace("http://127.0.0.1:5000", base)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=binary, args=["--no-sandbox"], headless=True)
            try:
                page = browser.new_page(viewport={"width": 1600, "height": 1000})
                page.goto(url, timeout=120_000)
                for c in COMPRESSORS:  # the compressors' rows, beside the job's parent
                    page.get_by_text(f"{c} (by budget)", exact=True).first.wait_for(timeout=120_000)
                page.get_by_text("browser-1", exact=True).first.wait_for(timeout=60_000)
                page.get_by_role("columnheader").filter(has_text=COLUMNS[-1]).first.wait_for(timeout=60_000)
                headers = {t.strip() for t in page.get_by_role("columnheader").all_inner_texts()}
                assert set(COLUMNS) <= headers, sorted(headers)
                assert not {"Dataset", "Source", "Models"} & headers
                assert "Model training" in page.locator("body").inner_text()
                assert "workflowType=machine_learning" in page.url

                page.locator("label").filter(has=page.locator("input[type=radio][value=CHART]")).first.click()
                section = page.get_by_text("by KV budget (one line per compressor)", exact=True).first
                section.wait_for(timeout=60_000)
                page.wait_for_timeout(3000)
                body = page.locator("body").inner_text()
                # one line per compressor in the accuracy and the memory chart (legend entries)
                for metric in ("accuracy", "max_own_peak_above_weights_mib", "kv_ratio_pct"):
                    for c in COMPRESSORS:
                        assert f"{c} (by budget) ({metric})" in body, (c, metric)
                # drawn over the budget: the x axes span the budgets' steps (10 to 50), not one step 0
                ticks = [float(t) for t in page.locator(".xtick text").all_text_contents() if t.strip()]
                assert ticks and min(ticks) <= 20 and max(ticks) >= 40 and 0 <= min(ticks), sorted(set(ticks))
                assert set(page.locator(".xtitle").all_text_contents()) == {"budget_pct"}
                assert page.locator(".js-plotly-plot .scatterlayer .trace").count() >= 3 * len(COMPRESSORS)
            finally:
                browser.close()
    finally:
        stop_server(proc)
