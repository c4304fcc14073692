"""Mutation check: does a one-line wrong rule in the product fail the fast tests meant to guard it?

Each mutation below is applied, by exact text replacement, to a fresh copy of the repository's packages
and tests in a temporary folder; the listed test files are then run there (slow tests excluded) with
``PYTHONPATH`` pointing at the copy. A mutation is *caught* by a file when pytest reports failing tests
(exit code 1); every listed file must catch its mutation. Before any mutation, the same files must pass
on an unmutated copy, so a failure means the mutation, not a broken checkout.

Not part of ``make test`` (pytest does not collect this file). Run from the repository root::

    python tests/mutation_check.py            # every mutation; exit 1 if any survives
    python tests/mutation_check.py --list     # what would be applied
    python tests/mutation_check.py --only capacity_plus_one --only window_one

Exit codes: 0 all caught, 1 some mutation survived in a listed file, 2 the check itself could not run
(target text not found, the unmutated tests fail, pytest errored instead of failing).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: What the fast tests need from the checkout (packages, tests, pytest config, job files some tests read).
COPIED = ("starkv", "baselines", "pipeline", "tests", "jobs", "pyproject.toml")
PACKAGES = ("starkv", "baselines", "pipeline")


@dataclass(frozen=True)
class Mutation:
    name: str
    path: str  # file inside the repository
    old: str  # exact text, must occur exactly once
    new: str
    tests: tuple[str, ...]  # fast test files that must each fail under the mutation
    why: str


MUTATIONS: tuple[Mutation, ...] = (
    Mutation("capacity_plus_one", "starkv/budget.py",
             "    return int(prompt_length * budget_percent / 100)\n",
             "    return int(prompt_length * budget_percent / 100) + 1\n",
             ("tests/starkv/test_hook.py", "tests/starkv/test_starkv_method.py", "tests/starkv/test_compressor_matrix.py",
              "tests/baselines/test_baselines_unit.py"),
             "budget rule C = int(L·b/100) off by one"),
    Mutation("window_one", "starkv/budget.py",
             "    window = max(1, min(window_size, cap - 2))\n",
             "    window = 1\n",
             ("tests/starkv/test_hook.py", "tests/starkv/test_starkv_method.py", "tests/starkv/test_compressor_matrix.py",
              "tests/baselines/test_baselines_unit.py"),
             "8-token window shrunk to 1, same total"),
    Mutation("hook_selects_at_full_budget", "starkv/hook.py",
             "        idx = comp.select(ctx) if ctx.plan.compresses else None\n",
             "        idx = comp.select(ctx)\n",
             ("tests/baselines/test_baselines_unit.py",),
             "b = 100 no longer short-circuits to keeping everything"),
    Mutation("regress_missing_unit_passes", "pipeline/results/regression.py",
             "FAILING = (REGRESSION, MISSING)\n",
             "FAILING = (REGRESSION,)\n",
             ("tests/results/test_regress.py",),
             "a baseline unit missing from the current run no longer fails regress"),
    Mutation("read_rows_accepts_conflicts", "pipeline/results/store/rowfiles.py",
             "            if diff is not None:\n",
             "            if False:\n",
             ("tests/results/test_result_store.py",),
             "a store with conflicting copies of a step is read silently"),
    Mutation("child_run_without_compressor_tag", "pipeline/tracking/mlflow_runs.py",
             '"starkv.unit": s.key, "compressor": s.compressor, "budget": f"{s.budget:g}"}',
             '"starkv.unit": s.key, "budget": f"{s.budget:g}"}',
             ("tests/tracking/test_tracking_tags.py",),
             "README filter tags.compressor finds no child run"),
    Mutation("job_tags_without_benchmark", "pipeline/tracking/mlflow_runs.py",
             '"benchmark": cfg.benchmark.name, "model": cfg.model.path}',
             '"model": cfg.model.path}',
             ("tests/tracking/test_tracking_tags.py",),
             "README filter tags.benchmark finds no run"),
    Mutation("agentnet_click_threshold", "pipeline/benchmarks/agentnet/benchmark.py",
             "COORD_THRESHOLD = 0.01 * math.sqrt(2.0)\n",
             "COORD_THRESHOLD = 0.05 * math.sqrt(2.0)\n",
             ("tests/benchmarks/test_bench_agentnet.py",),
             "AgentNetBench click τ 0.01·√2 -> 0.05·√2"),
    Mutation("agentnet_click_decay", "pipeline/benchmarks/agentnet/benchmark.py",
             "DECAY = 120.0\n", "DECAY = 100.0\n",
             ("tests/benchmarks/test_bench_agentnet.py",),
             "AgentNetBench click decay exp(-120·(d - τ)) -> exp(-100·…)"),
    Mutation("agentnet_write_threshold", "pipeline/benchmarks/agentnet/rules.py",
             "WRITE_THRESHOLD = 0.8\n", "WRITE_THRESHOLD = 0.75\n",
             ("tests/benchmarks/test_bench_agentnet.py",),
             "AgentNetBench write similarity cut 0.8 -> 0.75"),
    Mutation("agentnet_correct_threshold", "pipeline/benchmarks/agentnet/benchmark.py",
             "CORRECT_THRESHOLD = 0.5\n", "CORRECT_THRESHOLD = 0.35\n",
             ("tests/benchmarks/test_bench_agentnet.py",),
             "AgentNetBench step success from a score of 0.5 -> 0.35"),
    Mutation("androidcontrol_click_radius", "pipeline/benchmarks/androidcontrol/benchmark.py",
             "CLICK_RADIUS = 0.14 ", "CLICK_RADIUS = 0.15 ",
             ("tests/benchmarks/test_bench_androidcontrol.py",),
             "AndroidControl click radius 0.14 -> 0.15"),
    Mutation("androidcontrol_f1_threshold", "pipeline/benchmarks/androidcontrol/benchmark.py",
             "F1_THRESHOLD = 0.5\n", "F1_THRESHOLD = 0.4\n",
             ("tests/benchmarks/test_bench_androidcontrol.py",),
             "AndroidControl text/app token F1 > 0.5 -> > 0.4"),
    Mutation("androidcontrol_pixel_threshold", "pipeline/benchmarks/androidcontrol/benchmark.py",
             "    return max(72.0, 0.10 * min(width, height))\n",
             "    return max(72.0, 0.12 * min(width, height))\n",
             ("tests/benchmarks/test_bench_androidcontrol.py",),
             "AndroidControl pixel protocol thr = max(72, 0.10·min(W, H)) -> 0.12"),
    Mutation("screenspot_box_slack", "pipeline/benchmarks/common/grounding.py",
             "BOX_SLACK_FRACTION = 0.01\n", "BOX_SLACK_FRACTION = 0.03\n",
             ("tests/benchmarks/test_bench_screenspot.py",),
             "ScreenSpot-v2 box slack 1 % -> 3 % of the image"),
    Mutation("views_six_calls", "pipeline/agent/views.py",
             "        return self.calls < self.views.max_calls\n",
             "        return self.calls <= self.views.max_calls\n",
             ("tests/benchmarks/test_mind2web_blocks.py",),
             "Mind2Web blocks: a 6th model call after the 5th scroll"),
    Mutation("views_down_past_the_last_block", "pipeline/agent/views.py",
             "direction == \"down\" and self.view + 1 < len(self.views.paths):",
             "direction == \"down\":",
             ("tests/benchmarks/test_mind2web_blocks.py",),
             "Mind2Web blocks: scroll down at the last block moves off the page"),
    Mutation("views_scored_in_the_shown_block", "pipeline/step/engine.py",
             "width, height = step.meta.get(\"frame_size\") or image.size",
             "width, height = image.size",
             ("tests/benchmarks/test_mind2web_blocks.py",),
             "Mind2Web blocks: a call's point read in its own block's frame, not block 0's"),
    Mutation("mind2web_no_padding", "pipeline/benchmarks/mind2web/benchmark.py",
             "            missing = max(0, total - len(per_task[task]))\n",
             "            missing = 0\n",
             ("tests/benchmarks/test_mind2web_blocks.py",),
             "Mind2Web blocks: a task's missing steps are not padded with 0"),
    Mutation("androidcontrol_context_two_frames", "pipeline/benchmarks/androidcontrol/context.py",
             "DEFAULT_CONTEXT_FRAMES = 4 ", "DEFAULT_CONTEXT_FRAMES = 2 ",
             ("tests/benchmarks/test_androidcontrol_context.py",),
             "AndroidControl history frames: 2 instead of the driver's 4"),
    Mutation("accounting_ignores_copies", "pipeline/memory/accounting.py",
             "        if kind == VIEW:\n", "        if kind != FRESH:\n",
             ("tests/memory/test_memory_accounting.py",),
             "a dtype change or a copy of a non-contiguous tensor is not counted as an allocation"),
    Mutation("shared_fastv_flops_from_zero", "starkv/shared.py",
             "flops = meter.total if meter is not None and meter.counting else None",
             "flops = 0 if meter is not None and meter.counting else None",
             ("tests/baselines/test_fastv.py",),
             "a FastV unit on a shared prefill reports only its own layers' flops"),
)


def copy_tree(dest: Path) -> None:
    for name in COPIED:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(src, dest / name)


def apply(mutation: Mutation, dest: Path) -> None:
    target = dest / mutation.path
    text = target.read_text()
    count = text.count(mutation.old)
    if count != 1:
        raise SystemExit(f"mutation {mutation.name}: expected the target text exactly once in {mutation.path}, "
                         f"found it {count} times: {mutation.old!r}")
    target.write_text(text.replace(mutation.old, mutation.new))


def environment(dest: Path) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(dest), "RAY_AUTH_MODE": "disabled", "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def check_imports(dest: Path) -> None:
    """The copy, not the checkout or an installed package, must be what the tests import."""
    code = f"import importlib; print(' '.join(importlib.import_module(p).__file__ for p in {PACKAGES!r}))"
    out = subprocess.run([sys.executable, "-c", code], cwd=dest, env=environment(dest), capture_output=True,
                         text=True, check=True).stdout.split()
    stray = [f for f in out if not Path(f).resolve().is_relative_to(dest.resolve())]
    if stray:
        raise SystemExit(f"the copy at {dest} is shadowed: imported {stray}")


#: pytest's exit code when every test of a file was deselected
NO_TESTS_COLLECTED = 5


def run_file(dest: Path, test_file: str) -> tuple[int, float, str]:
    """Run ``test_file``'s fast tests in the copy; a file whose tests are all ``slow`` (a model-run module)
    runs them all, since they are what guards the mutation."""
    base = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider"]
    t0 = time.perf_counter()
    proc = subprocess.run([*base, "-m", "not slow", test_file], cwd=dest, env=environment(dest),
                          capture_output=True, text=True)
    if proc.returncode == NO_TESTS_COLLECTED:
        proc = subprocess.run([*base, test_file], cwd=dest, env=environment(dest), capture_output=True, text=True)
    lines = [x for x in proc.stdout.splitlines() if x.strip()]
    return proc.returncode, time.perf_counter() - t0, lines[-1] if lines else proc.stderr.strip()[-200:]


def with_copy(fn):
    with tempfile.TemporaryDirectory(prefix="starkv-mutation-") as tmp:
        dest = Path(tmp)
        copy_tree(dest)
        return fn(dest)


def baseline(files: list[str]) -> None:
    def go(dest: Path) -> None:
        check_imports(dest)
        for f in files:
            rc, secs, last = run_file(dest, f)
            print(f"  unmutated  {f:<38} {'pass' if rc == 0 else 'FAIL'}  ({secs:.0f} s) {last}", flush=True)
            if rc != 0:
                raise SystemExit(f"{f} fails without any mutation; fix that first")

    with_copy(go)


def run_mutation(m: Mutation) -> list[tuple[str, str]]:
    def go(dest: Path) -> list[tuple[str, str]]:
        apply(m, dest)
        check_imports(dest)
        results = []
        for f in m.tests:
            rc, secs, last = run_file(dest, f)
            verdict = {0: "MISSED", 1: "caught"}.get(rc, f"ERROR rc={rc}")
            print(f"  {m.name:<34} {f:<38} {verdict}  ({secs:.0f} s) {last}", flush=True)
            results.append((f, verdict))
        return results

    return with_copy(go)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", action="append", help="run only this mutation (repeatable)")
    parser.add_argument("--list", action="store_true", help="print the mutations and exit")
    parser.add_argument("--no-baseline", action="store_true", help="skip the unmutated run of the test files")
    args = parser.parse_args(argv)
    known = {m.name: m for m in MUTATIONS}
    unknown = sorted(set(args.only or ()) - set(known))
    if unknown:
        parser.error(f"unknown mutation(s) {unknown}; known: {', '.join(known)}")
    chosen = [known[n] for n in args.only] if args.only else list(MUTATIONS)
    if args.list:
        for m in chosen:
            print(f"{m.name}: {m.path}: {m.old.strip()!r} -> {m.new.strip()!r}  [{m.why}]  tests: {', '.join(m.tests)}")
        return 0
    for m in chosen:  # every target must exist before spending minutes on tests
        count = (ROOT / m.path).read_text().count(m.old)
        if count != 1:
            raise SystemExit(f"mutation {m.name}: target text found {count} times in {m.path}: {m.old!r}")
    files = sorted({f for m in chosen for f in m.tests})
    if not args.no_baseline:
        print("baseline (no mutation):", flush=True)
        baseline(files)
    print("mutations:", flush=True)
    outcome = {m.name: run_mutation(m) for m in chosen}
    errors = [(n, f) for n, res in outcome.items() for f, v in res if v.startswith("ERROR")]
    missed = [(n, f) for n, res in outcome.items() for f, v in res if v == "MISSED"]
    caught = sum(all(v == "caught" for _, v in res) for res in outcome.values())
    print(f"\n{caught}/{len(chosen)} mutations caught by every listed test file")
    for n, f in missed:
        print(f"SURVIVED: {n} in {f}")
    for n, f in errors:
        print(f"ERROR (pytest did not run the tests): {n} in {f}")
    return 2 if errors else (1 if missed else 0)


if __name__ == "__main__":
    sys.exit(main())
