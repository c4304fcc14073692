"""Take the MLflow UI screenshots of docs/mlflow/ from a run's store, in headless Chromium.

    python tests/tools/mlflow_screenshots.py STORE_DIR_OR_MLFLOW_DB OUT_DIR [--port 5055]

Starts ``mlflow ui`` on loopback on a copy of the store (the UI may migrate or write to its database; the
artifacts are read where the runs point), opens five views and saves them as PNGs into OUT_DIR:

- ``runs_table.png``: the Runs table through the link ``starkv-eval run`` prints (the model-training layout
  and the job's shared view, ``viewStateShareKey``: its filter and metric columns, nothing chosen by hand);
- ``budget_charts.png``: the same link's chart view: accuracy and peak memory vs budget, a line per compressor;
- ``parent_run.png``: the parent run's page, its description (the run note with the summary) unfolded;
- ``child_run.png``: one child run's page (``--child``, default ``snapkv@20%``);
- ``compare.png``: the Compare view of a few children (``--compare``), parallel coordinates vs accuracy.

Then it stops the server it started. Every wait is bounded (``--start-timeout`` for the server, ``--timeout``
per page) and a watchdog ends everything after ``--max-seconds``. Exit 0 when all five PNGs were written.

Needs Playwright (``pip install playwright``) and a Chromium; its own browser download is not needed: the
Debian one (``apt-get install chromium``, ``/usr/lib/chromium/chromium``) is launched with ``--no-sandbox``.
MLflow pages render client-side, so each view waits for a known text (a run name) before the screenshot.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

HOST = "127.0.0.1"
#: without it a fresh browser shows MLflow's GenAI layout; the link ``starkv-eval run`` prints carries it
ML = "workflowType=machine_learning"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def default_mlflow() -> str:
    here = Path(sys.executable).with_name("mlflow")
    return str(here) if here.exists() else (shutil.which("mlflow") or "mlflow")


def port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex((HOST, port)) != 0


def start_server(mlflow: str, db: Path, port: int, log_path: Path) -> subprocess.Popen:
    """``mlflow ui`` in its own process group (so stopping it also stops its workers)."""
    cmd = [mlflow, "ui", "--backend-store-uri", f"sqlite:///{db}", "--host", HOST, "--port", str(port)]
    log("starting: " + " ".join(cmd))
    out = open(log_path, "wb")  # noqa: SIM115 (open for the server's lifetime)
    return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=db.parent, start_new_session=True)


def stop_server(proc: subprocess.Popen) -> None:
    """SIGTERM to the server's process group, then SIGKILL to whatever of it is left (its job consumers can
    take long to wind down)."""
    log(f"stopping mlflow ui (process group {proc.pid})")
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            pass
        if sig == signal.SIGTERM:
            time.sleep(2)
    if proc.poll() is None:
        log(f"  mlflow ui (pid {proc.pid}) did not stop")


def wait_ready(proc: subprocess.Popen, base: str, timeout: float, log_path: Path) -> None:
    """Poll ``/health`` until it answers (MLflow can take ~100 s to start on a loaded machine)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"mlflow ui exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(base + "/health", timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(2)
    raise SystemExit(f"mlflow ui did not answer within {timeout:.0f} s:\n{log_path.read_text()[-3000:]}")


def api(base: str, path: str, body: dict) -> dict:
    req = urllib.request.Request(
        f"{base}/api/2.0/mlflow/{path}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.load(r)


def find_runs(base: str, experiment: str | None, parent_name: str | None) -> tuple[str, dict, list[dict]]:
    """Experiment id, the parent run (newest top-level run unless named) and its children."""
    exps = api(base, "experiments/search", {"max_results": 1000}).get("experiments", [])
    if experiment:
        exps = [e for e in exps if experiment in (e["name"], e["experiment_id"])]
    else:
        exps = [e for e in exps if e["name"] != "Default"] or exps
    for exp in sorted(exps, key=lambda e: -int(e.get("last_update_time", 0))):
        runs = api(base, "runs/search", {"experiment_ids": [exp["experiment_id"]], "max_results": 1000}).get(
            "runs", []
        )
        if not runs:
            continue

        def tags(r: dict) -> dict:
            return {t["key"]: t["value"] for t in r["data"].get("tags", [])}

        # top-level runs, without the per-compressor runs (top-level too, so the charts draw them)
        parents = [r for r in runs if "mlflow.parentRunId" not in tags(r) and tags(r).get("starkv.kind") != "compressor"]
        if parent_name:
            parents = [r for r in parents if r["info"]["run_name"] == parent_name]
        if not parents:
            continue
        parent = max(parents, key=lambda r: int(r["info"]["start_time"]))
        pid = parent["info"]["run_id"]
        children = [r for r in runs if tags(r).get("mlflow.parentRunId") == pid]
        return exp["experiment_id"], parent, children
    raise SystemExit(
        f"no experiment with a parent run found (experiment={experiment!r}, parent={parent_name!r})"
    )


def pick(children: list[dict], names: list[str]) -> list[dict]:
    by_name = {r["info"]["run_name"]: r for r in children}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise SystemExit(f"no child run named {missing}; children: {sorted(by_name)}")
    return [by_name[n] for n in names]


class Shooter:
    def __init__(self, page, base: str, out: Path, timeout_ms: int):
        self.page, self.base, self.out, self.timeout = page, base, out, timeout_ms

    def open(self, fragment: str, *texts: str) -> None:
        log(f"open #{fragment}")
        self.page.goto(f"{self.base}/#{fragment}", timeout=self.timeout)
        for text in texts:
            self.page.get_by_text(text, exact=True).first.wait_for(timeout=self.timeout)
        self.close_assistant()

    def close_assistant(self) -> None:
        """The MLflow Assistant side panel opens by itself in a fresh profile; it only takes room."""
        self.page.wait_for_timeout(1000)
        close = self.page.get_by_role("button", name="Close", exact=True)
        if not (
            self.page.get_by_text("MLflow Assistant").count() and close.count() and close.first.is_visible()
        ):
            return
        try:
            close.first.click(timeout=5000)
        except Exception as e:  # noqa: BLE001 (cosmetic only)
            log(f"  (assistant panel not closed: {e.__class__.__name__})")

    def settle(self, ms: int = 2500) -> None:
        """Let charts and lazy sections finish drawing; no spinner may remain."""
        self.page.mouse.move(1, self.page.viewport_size["height"] - 1)  # no hover tooltip
        self.page.wait_for_timeout(ms)
        spinner = self.page.locator(
            '[data-testid="loading-spinner"], .du-bois-light-spin-spinning, [role=progressbar]'
        )
        deadline = time.monotonic() + self.timeout / 1000
        while spinner.count() and time.monotonic() < deadline:
            self.page.wait_for_timeout(500)

    def shot(self, name: str) -> Path:
        self.settle()
        path = self.out / name
        self.page.screenshot(path=str(path))
        log(f"  wrote {path}")
        return path

    # --- the four views -------------------------------------------------------------------------------------

    def runs_table(self, exp_id: str, parent: dict) -> Path:
        """The printed link as is: the job's view brings its filter, columns and charts (no clicks)."""
        from pipeline.tracking.view import runs_page

        run_id = {t["key"]: t["value"] for t in parent["data"].get("tags", [])}.get("starkv.run_id")
        link = runs_page(exp_id, run_id, self.base)
        self.page.goto(link, timeout=self.timeout)
        self.page.get_by_role("columnheader").filter(has_text="accuracy").first.wait_for(timeout=self.timeout)
        self.close_assistant()
        self.settle()
        return self.shot("runs_table.png")

    def budget_charts(self) -> Path:
        """The chart view of the same page: the view's section of budget charts."""
        page = self.page
        page.locator("label").filter(has=page.locator("input[type=radio][value=CHART]")).first.click()
        page.get_by_text("by KV budget (one line per compressor)", exact=True).first.wait_for(timeout=self.timeout)
        self.settle(4000)
        return self.shot("budget_charts.png")

    def run_page(self, exp_id: str, run: dict, name: str) -> Path:
        rname = run["info"]["run_name"]
        self.open(f"/experiments/{exp_id}/runs/{run['info']['run_id']}?{ML}", rname, "Description")
        more = self.page.get_by_text("Show more", exact=True)
        if more.count():
            more.first.click(timeout=self.timeout)
        return self.shot(name)

    def compare(self, exp_id: str, runs: list[dict]) -> Path:
        ids = json.dumps([r["info"]["run_id"] for r in runs], separators=(",", ":"))
        exps = json.dumps([exp_id], separators=(",", ":"))
        frag = f"/compare-runs?runs={urllib.parse.quote(ids)}&experiments={urllib.parse.quote(exps)}&{ML}"
        self.open(frag, runs[0]["info"]["run_name"])
        self.page.get_by_text("Parallel Coordinates Plot", exact=True).first.wait_for(timeout=self.timeout)
        # MLflow preselects the first three params by name; one that not every compared run has (a compressor's
        # own knob, e.g. starkv's alpha) draws a misleading axis, so take it off the plot
        have = [{q["key"] for q in r["data"].get("params", [])} for r in runs]
        partial = set.union(*have) - set.intersection(*have)
        chips = self.page.locator(".du-bois-light-select-selection-item")
        for name in [t.strip() for t in chips.all_inner_texts() if t.strip() in partial]:
            log(f"  parallel coordinates: without {name!r} (not a param of every run)")
            chip = chips.filter(has=self.page.get_by_text(name, exact=True)).first
            try:
                chip.locator(".du-bois-light-select-selection-item-remove").first.click(timeout=5000)
            except Exception as e:  # noqa: BLE001 (cosmetic only)
                log(f"  ({name!r} not removed: {e.__class__.__name__})")
        return self.shot("compare.png")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("store", type=Path, help="mlflow.db, or the output folder holding it")
    ap.add_argument("out", type=Path, help="folder for the PNGs")
    ap.add_argument("--port", type=int, default=5055)
    ap.add_argument("--experiment", help="experiment name or id (default: the newest one with runs)")
    ap.add_argument("--parent", help="parent run name (default: the newest top-level run)")
    ap.add_argument("--child", default="snapkv@20%")
    ap.add_argument(
        "--compare",
        default="full@10%,snapkv@10%,guikv@10%,starkv@10%,full@50%,snapkv@50%,guikv@50%,starkv@50%",
        help="comma-separated child run names for the Compare view",
    )
    ap.add_argument("--size", default="1600x1000", help="viewport WIDTHxHEIGHT")
    ap.add_argument(
        "--chromium", default="/usr/lib/chromium/chromium", help="browser binary ('' = Playwright's)"
    )
    ap.add_argument("--mlflow", default=default_mlflow())
    ap.add_argument("--no-copy", action="store_true", help="serve the store in place instead of a copy")
    ap.add_argument("--server", help="use this running MLflow (http://host:port) instead of starting one")
    ap.add_argument("--start-timeout", type=float, default=300, help="seconds to wait for mlflow ui")
    ap.add_argument("--timeout", type=float, default=90, help="seconds to wait for each page")
    ap.add_argument("--max-seconds", type=float, default=900, help="watchdog for the whole script")
    args = ap.parse_args(argv)

    from playwright.sync_api import sync_playwright

    db = args.store / "mlflow.db" if args.store.is_dir() else args.store
    if not args.server and not db.is_file():
        raise SystemExit(f"{db}: no such store")
    if not args.server and not port_free(args.port):
        raise SystemExit(f"port {args.port} on {HOST} is already in use")
    width, height = (int(v) for v in args.size.lower().split("x"))
    args.out.mkdir(parents=True, exist_ok=True)

    tmp = Path(tempfile.mkdtemp(prefix="mlflow-shots-"))
    if not args.no_copy and not args.server:
        shutil.copy2(db, tmp / "mlflow.db")
        db = tmp / "mlflow.db"
    log_path = tmp / "mlflow-ui.log"
    proc = None if args.server else start_server(args.mlflow, db.resolve(), args.port, log_path)

    def watchdog() -> None:
        log(f"watchdog: still running after {args.max_seconds:.0f} s, stopping")
        if proc is not None:
            stop_server(proc)
        os._exit(3)

    timer = threading.Timer(args.max_seconds, watchdog)
    timer.daemon = True
    timer.start()
    base = args.server.rstrip("/") if args.server else f"http://{HOST}:{args.port}"
    written: list[Path] = []
    try:
        if proc is not None:
            t0 = time.monotonic()
            wait_ready(proc, base, args.start_timeout, log_path)
            log(f"mlflow ui answers after {time.monotonic() - t0:.0f} s")
        exp_id, parent, children = find_runs(base, args.experiment, args.parent)
        child = pick(children, [args.child])[0]
        compared = pick(children, [n.strip() for n in args.compare.split(",") if n.strip()])
        log(f"experiment {exp_id}, parent {parent['info']['run_name']} with {len(children)} children")
        with sync_playwright() as p:
            launch = {"args": ["--no-sandbox"], "headless": True}
            if args.chromium:
                launch["executable_path"] = args.chromium
            browser = p.chromium.launch(**launch)
            try:
                page = browser.new_page(viewport={"width": width, "height": height})
                s = Shooter(page, base, args.out, int(args.timeout * 1000))
                written.append(s.runs_table(exp_id, parent))
                written.append(s.budget_charts())
                written.append(s.run_page(exp_id, parent, "parent_run.png"))
                written.append(s.run_page(exp_id, child, "child_run.png"))
                written.append(s.compare(exp_id, compared))
            finally:
                browser.close()
    finally:
        timer.cancel()
        if proc is not None:
            stop_server(proc)
        shutil.rmtree(tmp, ignore_errors=True)
    log(f"{len(written)} screenshots in {args.out}")
    return 0 if len(written) == 5 else 1


if __name__ == "__main__":
    sys.exit(main())
