"""Static checks of infra/: every YAML parses, every Kubernetes object validates against the schemas
vendored in infra/schemas/, and the pieces agree with each other (images, versions, service names,
secrets, volumes, the nightly entrypoint, the schedule). No cluster, no network: runs in well under a second."""

from __future__ import annotations

import argparse
import fnmatch
import importlib
import importlib.util
import json
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema  # dev dependency: schema validation is never skipped silently
import pytest
import referencing
import yaml

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
SCHEMAS = INFRA / "schemas"
DOCKERFILE = INFRA / "docker" / "Dockerfile"
MLFLOW_DOCKERFILE = INFRA / "docker" / "mlflow.Dockerfile"
NIGHTLY_JOB_CONFIG = "jobs/nightly.yaml"

SCHEMA_BY_KIND = {
    "RayCluster": "raycluster.json",
    "RayJob": "rayjob.json",
    "CronJob": "cronjob.json",
    "Deployment": "deployment.json",
    "StatefulSet": "statefulset.json",
    "Service": "service.json",
    "Secret": "secret.json",
    "PersistentVolumeClaim": "persistentvolumeclaim.json",
    "Namespace": "namespace.json",
    "ServiceAccount": "serviceaccount.json",
    "Role": "role.json",
    "RoleBinding": "rolebinding.json",
    "Kustomization": "kustomization.json",
}
SHELL_BUILTINS_ALLOWED = frozenset({"set", "cd", "export", "echo", "test", "["})


# ---------------------------------------------------------------- loading


def yaml_files() -> list[Path]:
    return sorted(p for p in INFRA.rglob("*") if p.suffix in {".yaml", ".yml"} and p.is_file())


def load_docs(path: Path) -> list[Any]:
    with path.open() as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def manifests() -> list[tuple[Path, dict]]:
    """Every YAML document with apiVersion+kind (Kubernetes objects and the Kustomization)."""
    out = []
    for path in yaml_files():
        for doc in load_docs(path):
            if isinstance(doc, dict) and "apiVersion" in doc and "kind" in doc:
                out.append((path, doc))
    return out


MANIFESTS = manifests()
K8S_OBJECTS = [(p, d) for p, d in MANIFESTS if d["kind"] != "Kustomization"]


def object_name(doc: dict) -> str:
    meta = doc.get("metadata") or {}
    return meta.get("name") or meta.get("generateName") or ""


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def objects(kind: str) -> list[dict]:
    return [d for _, d in MANIFESTS if d["kind"] == kind]


def one(kind: str) -> dict:
    found = objects(kind)
    assert len(found) == 1, f"expected exactly one {kind}, found {len(found)}"
    return found[0]


def kustomization() -> dict:
    return yaml.safe_load((INFRA / "kustomization.yaml").read_text())


def images() -> dict[str, str]:
    return yaml.safe_load((INFRA / "images.yaml").read_text())["images"]


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def pinned(dist: str) -> str:
    """The `==` pin of `dist` in pyproject's dependencies (extras allowed: ray[default,data]==X)."""
    for req in pyproject()["project"]["dependencies"]:
        m = re.fullmatch(rf"{re.escape(dist)}(\[[^\]]*\])?==([\w.]+)", req.replace(" ", ""))
        if m:
            return m.group(2)
    raise AssertionError(f"{dist} is not pinned with == in pyproject.toml")


def dockerfile_args(path: Path) -> dict[str, str]:
    args = {}
    for line in path.read_text().splitlines():
        m = re.match(r"^ARG\s+(\w+)=(\S+)", line.strip())
        if m:
            args[m.group(1)] = m.group(2).strip('"')
    return args


# ---------------------------------------------------------------- walking pods and containers


def pod_specs(doc: dict) -> Iterator[tuple[str, dict]]:
    """(label, pod spec) for every pod template an object carries."""
    kind, spec = doc["kind"], doc.get("spec") or {}
    if kind in {"Deployment", "StatefulSet"}:
        yield kind, spec["template"]["spec"]
    elif kind == "CronJob":
        yield kind, spec["jobTemplate"]["spec"]["template"]["spec"]
    elif kind == "RayCluster":
        yield from ray_cluster_pods(spec, "RayCluster")
    elif kind == "RayJob":
        if "rayClusterSpec" in spec:
            yield from ray_cluster_pods(spec["rayClusterSpec"], "RayJob")
        if "submitterPodTemplate" in spec:
            yield "RayJob submitter", spec["submitterPodTemplate"]["spec"]


def ray_cluster_pods(spec: dict, owner: str) -> Iterator[tuple[str, dict]]:
    yield f"{owner} head", spec["headGroupSpec"]["template"]["spec"]
    for group in spec.get("workerGroupSpecs", []):
        yield f"{owner} worker group {group['groupName']}", group["template"]["spec"]


def containers(pod: dict) -> list[dict]:
    return list(pod.get("containers", [])) + list(pod.get("initContainers", []))


def env_of(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def ray_cluster_specs() -> list[tuple[str, dict]]:
    out = [(f"RayCluster {d['metadata']['name']}", d["spec"]) for d in objects("RayCluster")]
    out += [
        ("RayJob", d["spec"]["rayClusterSpec"]) for d in objects("RayJob") if "rayClusterSpec" in d["spec"]
    ]
    return out


# ---------------------------------------------------------------- schema validation


def schema_registry() -> referencing.Registry:
    resources = []
    for path in SCHEMAS.glob("*.json"):
        schema = json.loads(path.read_text())
        resources.append((schema["$id"], referencing.Resource.from_contents(schema)))
    return referencing.Registry().with_resources(resources)


REGISTRY = schema_registry()


def validator_for(kind: str) -> jsonschema.protocols.Validator:
    assert kind in SCHEMA_BY_KIND, f"no vendored schema for kind {kind}: add one to infra/schemas/"
    schema = json.loads((SCHEMAS / SCHEMA_BY_KIND[kind]).read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema, registry=REGISTRY)


def schema_errors(doc: dict) -> list[str]:
    errors = sorted(validator_for(doc["kind"]).iter_errors(doc), key=lambda e: list(e.absolute_path))
    return [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in errors]


# ---------------------------------------------------------------- cron


_MONTHS = ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"]
_DAYS = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"]
_CRON_FIELDS = [(0, 59, None, 0), (0, 23, None, 0), (1, 31, None, 0), (1, 12, _MONTHS, 1), (0, 7, _DAYS, 0)]


def _cron_value(token: str, lo: int, hi: int, names: list[str] | None, offset: int) -> int | None:
    if token.isdigit():
        value = int(token)
        return value if lo <= value <= hi else None
    if names and token.upper() in names:
        return names.index(token.upper()) + offset
    return None


def _valid_cron_field(field: str, lo: int, hi: int, names: list[str] | None, offset: int) -> bool:
    for part in field.split(","):
        base, slash, step = part.partition("/")
        if slash and (not step.isdigit() or int(step) == 0):
            return False
        if base == "*":
            continue
        if "-" in base:
            a, _, b = base.partition("-")
            va, vb = _cron_value(a, lo, hi, names, offset), _cron_value(b, lo, hi, names, offset)
            if va is None or vb is None or va > vb:
                return False
        elif _cron_value(base, lo, hi, names, offset) is None:
            return False
    return True


def is_valid_cron(expr: str) -> bool:
    """Standard 5-field cron (minute hour day-of-month month day-of-week), as batch/v1 CronJob reads it."""
    fields = expr.split()
    return len(fields) == 5 and all(_valid_cron_field(f, *spec) for f, spec in zip(fields, _CRON_FIELDS))


@pytest.mark.parametrize(
    "expr, ok",
    [
        ("0 2 * * *", True),
        ("*/15 0-6 1,15 JAN-MAR mon-fri", True),
        ("30 23 * * 7", True),
        ("0 2 * *", False),  # 4 fields
        ("0 2 * * * *", False),  # 6 fields (seconds are not supported)
        ("60 2 * * *", False),
        ("0 24 * * *", False),
        ("0 2 0 * *", False),
        ("0 2 * 13 *", False),
        ("0 2 * * 8", False),
        ("0 6-2 * * *", False),
        ("*/0 2 * * *", False),
        ("@daily", False),
        ("0 2 * * FUNDAY", False),
    ],
)
def test_cron_validator(expr: str, ok: bool) -> None:
    assert is_valid_cron(expr) is ok


# ---------------------------------------------------------------- entrypoint parsing


def top_level_shell_hazards(command: str) -> list[str]:
    """Characters the KubeRay submitter's own bash would act on. KubeRay pastes the entrypoint into
    `bash -c "... ray job submit ... -- <entrypoint> ; ..."`, so an unquoted `&&` or `;` would run the
    rest in the submitter pod and `$X` (also inside double quotes) would expand there."""
    hazards, quote = [], None
    for ch in command:
        if quote == "'":
            quote = None if ch == "'" else quote
        elif ch == "'" and quote is None:
            quote = "'"
        elif ch == '"':
            quote = None if quote == '"' else '"'
        elif ch in "$`":
            hazards.append(ch)
        elif quote is None and ch in ";&|<>()":
            hazards.append(ch)
    return hazards


def split_commands(script: str) -> list[list[str]]:
    lexer = shlex.shlex(script, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    commands, current = [], []
    for token in lexer:
        if token and set(token) <= set(";&|"):
            if current:
                commands.append(current)
            current = []
        else:
            current.append(token)
    if current:
        commands.append(current)
    return commands


def entrypoint_commands(entrypoint: str) -> list[list[str]]:
    tokens = shlex.split(entrypoint)
    if tokens[:2] in (["bash", "-c"], ["sh", "-c"]):
        assert len(tokens) == 3, "bash -c takes exactly one quoted script"
        return split_commands(tokens[2])
    return [tokens]


def option(argv: list[str], flag: str) -> str | None:
    for i, token in enumerate(argv):
        if token == flag and i + 1 < len(argv):
            return argv[i + 1]
        if token.startswith(flag + "="):
            return token.split("=", 1)[1]
    return None


def subcommands_from_parser(parser: argparse.ArgumentParser) -> set[str]:
    for action in parser._actions:  # argparse has no public accessor for subparsers
        if isinstance(action, argparse._SubParsersAction):
            return set(action.choices)
    return set()


def real_subcommands() -> set[str]:
    """The subcommands the real CLI registers (from its own argument parser)."""
    from pipeline.cli import build_parser

    return subcommands_from_parser(build_parser())


def nightly_entrypoint() -> str:
    return one("RayJob")["spec"]["entrypoint"]


def starkv_commands() -> list[list[str]]:
    return [c for c in entrypoint_commands(nightly_entrypoint()) if c[0] == "starkv-eval"]


# ================================================================ tests: parsing and schemas


@pytest.mark.parametrize("path", yaml_files(), ids=rel)
def test_yaml_parses(path: Path) -> None:
    docs = load_docs(path)
    assert docs, f"{rel(path)} has no YAML document"
    assert all(isinstance(d, dict) for d in docs), f"{rel(path)}: every document must be a mapping"


def test_expected_files_exist() -> None:
    for name in [
        "README.md",
        "images.yaml",
        "kustomization.yaml",
        "docker/Dockerfile",
        "docker/mlflow.Dockerfile",
        "kuberay/raycluster.yaml",
        "kuberay/rayjob-nightly.yaml",
        "kuberay/nightly-cronjob.yaml",
    ]:
        assert (INFRA / name).is_file(), f"infra/{name} is missing"
    kinds = {d["kind"] for _, d in MANIFESTS}
    assert {"RayCluster", "RayJob", "CronJob", "Deployment", "Service", "StatefulSet", "Secret"} <= kinds


@pytest.mark.parametrize(
    "path, doc", MANIFESTS, ids=[f"{rel(p)}:{d['kind']}/{object_name(d)}" for p, d in MANIFESTS]
)
def test_manifest_matches_schema(path: Path, doc: dict) -> None:
    errors = schema_errors(doc)
    assert not errors, f"{rel(path)} {doc['kind']}:\n  " + "\n  ".join(errors)


def _broken(mutate) -> dict:
    doc = json.loads(json.dumps(one("RayCluster")))
    mutate(doc)
    return doc


@pytest.mark.parametrize(
    "mutate, why",
    [
        (lambda d: d["spec"]["workerGroupSpecs"][0].update(minReplica=1), "typo minReplica"),
        (
            lambda d: d["spec"]["headGroupSpec"]["rayStartParams"].update({"num-cpus": 0}),
            "int ray start param",
        ),
        (
            lambda d: d["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["env"].append(
                {"name": "X", "value": 1}
            ),
            "int env value",
        ),
        (lambda d: d["spec"]["workerGroupSpecs"][0].pop("maxReplicas"), "missing maxReplicas"),
        (lambda d: d.update(apiVersion="ray.io/v1alpha1"), "old apiVersion"),
        (lambda d: d["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0].pop("image"), "no image"),
    ],
    ids=lambda x: x if isinstance(x, str) else "",
)
def test_schema_rejects_common_mistakes(mutate, why: str) -> None:
    """The vendored schemas are strict enough to catch the mistakes the CRDs would reject."""
    assert schema_errors(_broken(mutate)), f"schema accepted a RayCluster with {why}"


# ================================================================ tests: images and versions


def test_every_image_is_declared_in_images_yaml() -> None:
    declared = set(images().values())
    for path, doc in MANIFESTS:
        for where, pod in pod_specs(doc):
            for c in containers(pod):
                assert c["image"] in declared, (
                    f"{rel(path)} {where}/{c['name']}: {c['image']} not in images.yaml"
                )
                assert not c["image"].endswith(":latest") and ":" in c["image"].rsplit("/", 1)[-1], c["image"]


def test_ray_pods_use_the_project_image() -> None:
    project_image = images()["eval"]
    for path, doc in MANIFESTS:
        if doc["kind"] in {"RayCluster", "RayJob"}:
            for where, pod in pod_specs(doc):
                for c in containers(pod):
                    assert c["image"] == project_image, f"{rel(path)} {where}: {c['image']}"


def test_image_tags_follow_the_versions_they_package() -> None:
    imgs = images()
    assert imgs["eval"].rsplit(":", 1)[1] == pyproject()["project"]["version"]
    assert imgs["mlflow"].rsplit(":", 1)[1] == pinned("mlflow")
    assert one("Deployment")["spec"]["template"]["spec"]["containers"][0]["image"] == imgs["mlflow"]


@pytest.mark.parametrize(
    "path, key", [(DOCKERFILE, "eval"), (MLFLOW_DOCKERFILE, "mlflow")], ids=["eval", "mlflow"]
)
def test_dockerfile_documents_its_image_name(path: Path, key: str) -> None:
    text = path.read_text()
    tags = re.findall(r"docker build -f (\S+) -t (\S+)", text)
    assert tags, f"{rel(path)}: no `docker build -f ... -t ...` line in its header"
    for dockerfile, tag in tags:
        assert tag == images()[key]
        assert dockerfile == rel(path)
    readme = (INFRA / "README.md").read_text()
    assert images()[key] in readme and rel(path) in readme


def test_worker_dockerfile_pins_match_pyproject() -> None:
    args = dockerfile_args(DOCKERFILE)
    text = DOCKERFILE.read_text()
    assert args["TRANSFORMERS_VERSION"] == pinned("transformers") == "5.23.0"
    assert args["MLFLOW_VERSION"] == pinned("mlflow") == "3.17.2"
    assert args["RAY_VERSION"] == pinned("ray")
    assert re.fullmatch(rf"rayproject/ray:{re.escape(args['RAY_VERSION'])}-py3\d+-cu\d+", args["BASE_IMAGE"])
    assert '"transformers==${TRANSFORMERS_VERSION}"' in text
    assert '"mlflow==${MLFLOW_VERSION}"' in text
    # flash-attn: exact pin, built against the installed CUDA torch.
    assert re.fullmatch(r"\d+\.\d+\.\d+(\.post\d+)?", args["FLASH_ATTN_VERSION"])
    assert re.search(r'pip install --no-build-isolation "flash-attn==\$\{FLASH_ATTN_VERSION\}"', text)
    # CUDA torch, pinned, never a CPU wheel; the CUDA of torch equals the CUDA of the base image.
    assert re.fullmatch(r"\d+\.\d+\.\d+", args["TORCH_VERSION"])
    assert '"torch==${TORCH_VERSION}"' in text
    torch_cuda = re.fullmatch(r"https://download\.pytorch\.org/whl/(cu\d+)", args["TORCH_INDEX_URL"])
    assert torch_cuda, args["TORCH_INDEX_URL"]
    assert args["BASE_IMAGE"].endswith("-" + torch_cuda.group(1))
    # The project itself is installed from the copied checkout.
    assert re.search(r"^RUN pip install \"?\.(\[[\w,]+\])?\"?$", text, re.M)
    assert "PIP_CONSTRAINT" in text


def _check_pins_module():
    spec = importlib.util.spec_from_file_location("check_pins", INFRA / "docker" / "check_pins.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_build_time_pin_check() -> None:
    """The image build runs infra/docker/check_pins.py; it must pass on a match and fail on drift."""
    from importlib.metadata import version

    check = _check_pins_module()
    assert check.main([f"pyyaml=={version('pyyaml')}", f"jsonschema=={version('jsonschema')}"]) == 0
    assert check.main(["pyyaml==0.0.1"]) == 1
    assert check.drift(["no-such-distribution-xyz==1.0"]) == {"no-such-distribution-xyz": ("missing", "1.0")}
    with pytest.raises(ValueError):
        check.drift(["pyyaml>=1"])
    text = DOCKERFILE.read_text()
    call = re.search(r"RUN python infra/docker/check_pins\.py --require-cuda((?:[^\n]*\\\n)*[^\n]*)", text)
    assert call, "Dockerfile does not run check_pins.py --require-cuda"
    for dist, arg in [
        ("torch", "TORCH"),
        ("transformers", "TRANSFORMERS"),
        ("mlflow", "MLFLOW"),
        ("ray", "RAY"),
        ("flash-attn", "FLASH_ATTN"),
    ]:
        assert f'"{dist}==${{{arg}_VERSION}}"' in call.group(1), dist


def test_nightly_entrypoint_directory_is_the_image_workdir() -> None:
    workdirs = re.findall(r"^WORKDIR\s+(\S+)", DOCKERFILE.read_text(), re.M)
    assert workdirs, "Dockerfile has no WORKDIR"
    cds = [c[1] for c in entrypoint_commands(nightly_entrypoint()) if c[0] == "cd"]
    assert cds in ([], [workdirs[-1]])


def test_mlflow_dockerfile_pins() -> None:
    args = dockerfile_args(MLFLOW_DOCKERFILE)
    text = MLFLOW_DOCKERFILE.read_text()
    assert args["MLFLOW_VERSION"] == pinned("mlflow")
    assert (
        '"mlflow[auth]==${MLFLOW_VERSION}"' in text
    )  # the auth extra: `--app-name basic-auth` needs Flask-WTF
    assert '"psycopg2-binary==${PSYCOPG2_VERSION}"' in text and '"boto3==${BOTO3_VERSION}"' in text
    assert re.search(r"^FROM python:3\.\d+-slim", text, re.M)


def test_ray_version_matches_pyproject() -> None:
    for where, spec in ray_cluster_specs():
        assert spec.get("rayVersion") == pinned("ray"), where


# ================================================================ tests: Ray cluster shape


def test_gpu_worker_groups() -> None:
    for where, spec in ray_cluster_specs():
        assert spec.get("enableInTreeAutoscaling") is True, f"{where}: autoscaling off"
        groups = spec["workerGroupSpecs"]
        assert len(groups) == 1, f"{where}: expected one GPU worker group"
        for g in groups:
            lo, hi = g["minReplicas"], g["maxReplicas"]
            assert 0 <= lo <= hi and hi >= 1, f"{where}/{g['groupName']}: min {lo} max {hi}"
            assert lo <= g.get("replicas", lo) <= hi, f"{where}/{g['groupName']}: replicas outside bounds"
            for c in g["template"]["spec"]["containers"][:1]:
                res = c["resources"]
                assert int(res["limits"]["nvidia.com/gpu"]) == 1, f"{where}: one GPU per worker"
                if "nvidia.com/gpu" in res.get("requests", {}):
                    assert int(res["requests"]["nvidia.com/gpu"]) == 1
            assert "num-gpus" not in g["rayStartParams"] or g["rayStartParams"]["num-gpus"] == "1"


def test_head_is_cpu_only_and_exposes_dashboard_and_gcs() -> None:
    for where, spec in ray_cluster_specs():
        head = spec["headGroupSpec"]
        assert head["rayStartParams"].get("num-gpus", "0") == "0"
        c = head["template"]["spec"]["containers"][0]
        for section in ("limits", "requests"):
            assert "nvidia.com/gpu" not in c.get("resources", {}).get(section, {}), f"{where}: GPU on head"
        ports = {p["containerPort"]: p.get("name") for p in c["ports"]}
        assert ports.get(8265) == "dashboard" and ports.get(6379) == "gcs-server", where


def test_ray_auth_mode_is_identical_everywhere() -> None:
    """Ray 2.60: server and every client (autoscaler sidecar, submitter) must share RAY_AUTH_MODE."""
    seen: list[tuple[str, str, Any]] = []
    for where, spec in ray_cluster_specs():
        autoscaler = {"name": "autoscaler", "env": spec.get("autoscalerOptions", {}).get("env", [])}
        pods = list(ray_cluster_pods(spec, where))
        for label, c in [(f"{w}/{c['name']}", c) for w, p in pods for c in p["containers"]] + [
            (f"{where}/autoscaler", autoscaler)
        ]:
            env = env_of(c)
            assert "RAY_AUTH_MODE" in env, f"{label}: RAY_AUTH_MODE not set"
            seen.append(
                (label, env["RAY_AUTH_MODE"].get("value"), env.get("RAY_AUTH_TOKEN", {}).get("valueFrom"))
            )
    for job in objects("RayJob"):
        for c in job["spec"].get("submitterPodTemplate", {}).get("spec", {}).get("containers", [])[:1]:
            env = env_of(c)
            assert "RAY_AUTH_MODE" in env, "RayJob submitter: RAY_AUTH_MODE not set"
            seen.append(
                (
                    "submitter",
                    env["RAY_AUTH_MODE"].get("value"),
                    env.get("RAY_AUTH_TOKEN", {}).get("valueFrom"),
                )
            )
    modes = {mode for _, mode, _ in seen}
    assert len(modes) == 1 and modes <= {"token", "disabled"}, seen
    if modes == {"token"}:
        tokens = {json.dumps(src, sort_keys=True) for _, _, src in seen}
        assert len(tokens) == 1 and None not in [src for _, _, src in seen], f"token sources differ: {seen}"


def test_nightly_rayjob_cluster_equals_raycluster() -> None:
    """Same image, env, volumes and shape; only the worker-count bounds may differ."""

    def normalised(spec: dict) -> dict:
        spec = json.loads(json.dumps(spec))
        for g in spec["workerGroupSpecs"]:
            for key in ("replicas", "minReplicas", "maxReplicas"):
                g.pop(key, None)
        return spec

    cluster, job = one("RayCluster"), one("RayJob")
    assert "rayClusterSpec" in job["spec"], "nightly RayJob uses clusterSelector: check that cluster instead"
    assert normalised(job["spec"]["rayClusterSpec"]) == normalised(cluster["spec"])


def test_nightly_rayjob_cleans_up() -> None:
    spec = one("RayJob")["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    assert isinstance(spec["ttlSecondsAfterFinished"], int) and spec["ttlSecondsAfterFinished"] >= 0
    assert 0 < spec["activeDeadlineSeconds"] < 24 * 3600, "a night's run must end before the next one starts"


# ================================================================ tests: entrypoint and CLI


def test_console_script_is_declared() -> None:
    scripts = pyproject()["project"]["scripts"]
    assert scripts.get("starkv-eval", "").startswith("pipeline.cli:")


def test_entrypoint_is_safe_to_paste_into_the_submitter_shell() -> None:
    hazards = top_level_shell_hazards(nightly_entrypoint())
    assert not hazards, f"unquoted shell syntax {hazards} would run in the KubeRay submitter pod"
    assert top_level_shell_hazards("a && b") and top_level_shell_hazards('x "$HOME"')
    assert not top_level_shell_hazards("bash -c 'a && b; c=$(date)'")


def test_entrypoint_runs_only_starkv_eval_commands() -> None:
    commands = entrypoint_commands(nightly_entrypoint())
    real = real_subcommands()
    first_program = next(
        c for c in commands if not re.match(r"^[A-Za-z_]\w*=", c[0]) and c[0] not in SHELL_BUILTINS_ALLOWED
    )
    assert first_program[0] == "starkv-eval", f"first program is {first_program[0]!r}"
    for c in commands:
        if re.match(r"^[A-Za-z_]\w*=", c[0]) or c[0] in SHELL_BUILTINS_ALLOWED:
            continue
        assert c[0] == "starkv-eval", f"unexpected program in entrypoint: {c}"
        assert len(c) > 1 and c[1] in real, f"{c[1:2]} is not a starkv-eval subcommand ({sorted(real)})"


def test_entrypoint_runs_nightly_then_regress_on_the_same_output() -> None:
    cmds = starkv_commands()
    assert [c[1] for c in cmds] == ["run", "regress"]
    run, regress = cmds
    assert run[2] == NIGHTLY_JOB_CONFIG
    output = option(run, "--output")
    assert output and output.startswith("/results/")
    assert option(regress, "--current") == output
    baseline = option(regress, "--baseline")
    assert baseline and baseline != output


def test_entrypoint_arguments_parse_with_the_real_cli() -> None:
    """Flags in the entrypoint (--output, --tracking-uri, --baseline, --current) exist in pipeline.cli."""
    from pipeline.cli import build_parser

    parser = build_parser()
    registered = subcommands_from_parser(parser)
    checked = 0
    for argv in starkv_commands():
        assert argv[1] in registered, f"the entrypoint uses an unknown subcommand: {shlex.join(argv)}"
        try:
            parser.parse_args(argv[1:])
        except SystemExit:
            pytest.fail(f"starkv-eval rejects the entrypoint's arguments: {shlex.join(argv)}")
        checked += 1
    assert checked >= 1, "not even `run` is registered in pipeline.cli.build_parser()"


def test_nightly_job_config_exists() -> None:
    assert (ROOT / NIGHTLY_JOB_CONFIG).is_file(), f"the nightly RayJob runs {NIGHTLY_JOB_CONFIG}"
    assert yaml.safe_load((ROOT / NIGHTLY_JOB_CONFIG).read_text())


# ================================================================ tests: MLflow wiring


def tracking_uris() -> list[tuple[str, str]]:
    found = []
    for path, doc in MANIFESTS:
        for where, pod in pod_specs(doc):
            for c in containers(pod):
                e = env_of(c).get("MLFLOW_TRACKING_URI")
                if e:
                    found.append((f"{rel(path)} {where}", e["value"]))
    uri = option(starkv_commands()[0], "--tracking-uri")
    if uri:
        found.append(("RayJob entrypoint --tracking-uri", uri))
    runtime_env = yaml.safe_load((INFRA / "runtime_env.yaml").read_text())
    found.append(("infra/runtime_env.yaml", runtime_env["env_vars"]["MLFLOW_TRACKING_URI"]))
    return found


def mlflow_container() -> dict:
    return one("Deployment")["spec"]["template"]["spec"]["containers"][0]


def test_tracking_uri_points_at_the_mlflow_service() -> None:
    uris = tracking_uris()
    assert len(uris) >= 4, uris  # head, worker, nightly head/worker, entrypoint, runtime_env
    values = {u for _, u in uris}
    assert len(values) == 1, f"MLFLOW_TRACKING_URI differs: {uris}"
    parts = urlsplit(values.pop())
    assert parts.scheme == "http"
    name, ns, *rest = parts.hostname.split(".")
    assert rest == ["svc", "cluster", "local"], parts.hostname
    services = [
        s for s in objects("Service") if s["metadata"]["name"] == name and s["metadata"]["namespace"] == ns
    ]
    assert services, f"no Service {ns}/{name}"
    port = next(p for p in services[0]["spec"]["ports"] if p["port"] == parts.port)
    # The Service port lands on the port mlflow listens on.
    container = mlflow_container()
    target = port["targetPort"]
    container_port = next(
        p["containerPort"] for p in container["ports"] if target in (p.get("name"), p["containerPort"])
    )
    assert option(container["args"], "--port") == str(container_port)
    assert option(container["args"], "--host") == "0.0.0.0"


def test_mlflow_allows_the_service_host_header() -> None:
    """MLflow 3.x answers 403 to Host headers outside --allowed-hosts; mirror its exact/fnmatch rule."""
    allowed = option(mlflow_container()["args"], "--allowed-hosts").split(",")
    for _, uri in tracking_uris():
        netloc = urlsplit(uri).netloc
        assert any(fnmatch.fnmatch(netloc, a) if "*" in a else netloc == a for a in allowed), netloc


def test_mlflow_server_stores() -> None:
    args = mlflow_container()["args"]
    assert args[0] == "server" and "--serve-artifacts" in args
    assert option(args, "--artifacts-destination")
    backend = urlsplit(option(args, "--backend-store-uri"))
    assert backend.scheme in {"postgresql", "postgresql+psycopg2"}
    # The password placeholder is an env var of the same container (Kubernetes expands $(VAR) in args).
    placeholder = re.fullmatch(r"\$\((\w+)\)", backend.password or "")
    assert placeholder and placeholder.group(1) in env_of(mlflow_container())
    # Host/port/user/database agree with the PostgreSQL Service and StatefulSet.
    svc = next(s for s in objects("Service") if s["metadata"]["name"] == backend.hostname)
    assert backend.port in [p["port"] for p in svc["spec"]["ports"]]
    pg_env = env_of(one("StatefulSet")["spec"]["template"]["spec"]["containers"][0])
    assert pg_env["POSTGRES_USER"]["value"] == backend.username
    assert pg_env["POSTGRES_DB"]["value"] == backend.path.lstrip("/")
    # Both sides read the same password.
    assert (
        pg_env["POSTGRES_PASSWORD"]["valueFrom"]
        == env_of(mlflow_container())[placeholder.group(1)]["valueFrom"]
    )


# ================================================================ tests: MLflow authentication


AUTH_SECRET = "mlflow-auth"


def _secret_source(env: dict[str, dict], name: str) -> tuple[str, str] | None:
    ref = env.get(name, {}).get("valueFrom", {}).get("secretKeyRef")
    return (ref["name"], ref["key"]) if ref else None


def render_init_container() -> dict:
    pod = one("Deployment")["spec"]["template"]["spec"]
    return next(c for c in pod["initContainers"] if c["name"] == "render-auth-config")


def test_mlflow_server_runs_the_basic_auth_app() -> None:
    container = mlflow_container()
    args, env = container["args"], env_of(container)
    assert option(args, "--app-name") == "basic-auth"
    # MLflow creates the admin from these on its first start, and its auth app needs the CSRF key.
    assert _secret_source(env, "MLFLOW_AUTH_ADMIN_USERNAME") == (AUTH_SECRET, "admin_username")
    assert _secret_source(env, "MLFLOW_AUTH_ADMIN_PASSWORD") == (AUTH_SECRET, "admin_password")
    assert _secret_source(env, "MLFLOW_FLASK_SERVER_SECRET_KEY") == (AUTH_SECRET, "flask_secret_key")
    # The config file the server reads is the one the init container renders, on a memory-only volume.
    config_path = Path(env["MLFLOW_AUTH_CONFIG_PATH"]["value"])
    pod = one("Deployment")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mount = next(m for m in container["volumeMounts"] if config_path.parent == Path(m["mountPath"]))
    assert volumes[mount["name"]]["emptyDir"].get("medium") == "Memory", "the rendered file holds a password"
    init = render_init_container()
    assert any(m["name"] == mount["name"] for m in init["volumeMounts"])
    assert str(config_path) in init["args"][0]
    # The template comes from the ConfigMap kustomize generates from infra/mlflow/basic_auth.ini.
    generated = {g["name"]: g["files"] for g in kustomization()["configMapGenerator"]}
    template_volume = next(
        volumes[m["name"]] for m in init["volumeMounts"] if "configMap" in volumes[m["name"]]
    )
    assert generated[template_volume["configMap"]["name"]] == ["mlflow/basic_auth.ini"]


def test_auth_config_renders_into_what_mlflow_reads(tmp_path, monkeypatch) -> None:
    """Run the init container's own script on the template, as Kubernetes would, and read the result with
    MLflow's own config reader: the auth database is the runs' PostgreSQL database with the real password."""
    from mlflow.server.auth.config import read_auth_config
    from mlflow.server.auth.permissions import ALL_PERMISSIONS

    init = render_init_container()
    pod = one("Deployment")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    script = init["args"][0]
    (tmp_path / "template").mkdir()
    (tmp_path / "rendered").mkdir()
    for m in init["volumeMounts"]:  # the pod's paths, moved into tmp
        local = tmp_path / ("template" if "configMap" in volumes[m["name"]] else "rendered")
        script = script.replace(m["mountPath"], str(local))
    (tmp_path / "template" / "basic_auth.ini").write_text((INFRA / "mlflow" / "basic_auth.ini").read_text())
    password = "0123456789abcdef0123456789abcdef"
    env = {}
    for e in init["env"]:  # Kubernetes expands $(VAR) from the variables defined before
        env[e["name"]] = (
            password if "valueFrom" in e else re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], e["value"])
        )
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    exec(compile(script, "render-auth-config", "exec"), {})  # noqa: S102 - the manifest's own script
    rendered = (
        tmp_path / "rendered" / Path(env_of(mlflow_container())["MLFLOW_AUTH_CONFIG_PATH"]["value"]).name
    )
    assert rendered.stat().st_mode & 0o077 == 0, "the rendered config must be private to the mlflow user"
    monkeypatch.setenv("MLFLOW_AUTH_CONFIG_PATH", str(rendered))
    monkeypatch.delenv("MLFLOW_AUTH_ADMIN_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_AUTH_ADMIN_PASSWORD", raising=False)
    config = read_auth_config()
    backend = option(mlflow_container()["args"], "--backend-store-uri").replace(
        "$(POSTGRES_PASSWORD)", password
    )
    assert config.database_uri == backend == f"postgresql://mlflow:{password}@postgres:5432/mlflow"
    assert config.default_permission in ALL_PERMISSIONS
    assert config.authorization_function == "mlflow.server.auth:authenticate_request_basic_auth"
    assert config.admin_password is None, "no admin password in the file: it comes from the Secret"


def test_pipeline_pods_log_in_with_the_admin_of_the_secret() -> None:
    """Every container that talks to MLflow sends MLFLOW_TRACKING_USERNAME/PASSWORD, and those are the
    account the server creates (the same Secret keys)."""
    server = env_of(mlflow_container())
    expected = (
        _secret_source(server, "MLFLOW_AUTH_ADMIN_USERNAME"),
        _secret_source(server, "MLFLOW_AUTH_ADMIN_PASSWORD"),
    )
    clients = 0
    for path, doc in MANIFESTS:
        for where, pod in pod_specs(doc):
            for c in containers(pod):
                env = env_of(c)
                if "MLFLOW_TRACKING_URI" in env:
                    clients += 1
                    got = (
                        _secret_source(env, "MLFLOW_TRACKING_USERNAME"),
                        _secret_source(env, "MLFLOW_TRACKING_PASSWORD"),
                    )
                    assert got == expected, f"{rel(path)} {where}/{c['name']}: {got}"
    assert clients >= 4  # head and GPU worker of the RayCluster and of the nightly RayJob


# ---------------------------------------------------------------- the placeholder check before an apply


def _check_secrets_module():
    import sys

    spec = importlib.util.spec_from_file_location("check_secrets", INFRA / "check_secrets.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


REAL_VALUES = {  # generated like the README says (openssl rand -hex 24 / -hex 32)
    ("mlflow-postgres", "password"): "3f9c2a7d1e5b4c8a9d0e1f2a3b4c5d6e7f8091a2b3c4d5e6",
    ("mlflow-auth", "admin_username"): "admin",
    ("mlflow-auth", "admin_password"): "8b1e0c4f7a2d9e3b6c5a1f0e2d4c6b8a9e7f1d3c5b7a9e1f",
    ("mlflow-auth", "flask_secret_key"): "c0ffee12deadbeef34567890abcdef12c0ffee12deadbeef34567890abcdef12",
    ("starkv-ray-auth", "auth_token"): "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90",
}


def _secret_files(tmp_path: Path, values: dict[tuple[str, str], str], encoded: bool = False) -> list[str]:
    """The repository's Secret manifests with ``values`` filled in (``encoded``: as base64 ``data``, the
    form `kubectl create secret --dry-run=client -o yaml` writes)."""
    import base64

    paths = []
    for path, doc in MANIFESTS:
        if doc["kind"] != "Secret":
            continue
        doc = json.loads(json.dumps(doc))
        name = doc["metadata"]["name"]
        filled = {k: values.get((name, k), v) for k, v in doc.pop("stringData").items()}
        if encoded:
            doc["data"] = {k: base64.b64encode(v.encode()).decode() for k, v in filled.items()}
        else:
            doc["stringData"] = filled
        out = tmp_path / path.name
        out.write_text(yaml.safe_dump(doc))
        paths.append(str(out))
    return paths


def test_check_secrets_refuses_the_placeholders_of_the_repository(capsys) -> None:
    check = _check_secrets_module()
    assert check.main([str(INFRA)]) == 2
    err = capsys.readouterr().err
    for name, key in [
        ("mlflow-postgres", "password"),
        ("mlflow-auth", "admin_password"),
        ("mlflow-auth", "flask_secret_key"),
        ("starkv-ray-auth", "auth_token"),
    ]:
        assert re.search(rf"Secret {name} key {key} still holds a placeholder", err), (name, key)
    assert "refusing to deploy: 4 problem(s)" in err


@pytest.mark.parametrize("encoded", [False, True], ids=["stringData", "data"])
def test_check_secrets_accepts_real_values(tmp_path, capsys, encoded: bool) -> None:
    check = _check_secrets_module()
    files = _secret_files(tmp_path, REAL_VALUES, encoded)
    assert len(files) == 3
    assert check.main(files) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "3 Secret(s) hold real values" in out
    for value in REAL_VALUES.values():
        assert value == "admin" or value not in out  # never prints a secret


@pytest.mark.parametrize(
    "secret, value, why",
    [
        (
            ("mlflow-auth", "admin_password"),
            "abcdefghij1",
            "is 11 characters, at least 12",
        ),  # MLflow's own minimum
        (
            ("mlflow-auth", "admin_password"),
            "password1234",
            "placeholder ('password1234')",
        ),  # MLflow's old default
        (("mlflow-auth", "admin_password"), "", "is empty"),
        (("mlflow-auth", "flask_secret_key"), "Change-Me-Before-Applying", "placeholder ('change-me')"),
        (("mlflow-postgres", "password"), "abc@def:ghi/jkl?mno", "need escaping in a URI"),
        (("starkv-ray-auth", "auth_token"), "short", "is 5 characters, at least 16"),
    ],
)
def test_check_secrets_refuses_values_the_services_would_reject(tmp_path, capsys, secret, value, why) -> None:
    check = _check_secrets_module()
    assert check.main(_secret_files(tmp_path, {**REAL_VALUES, secret: value})) == 2
    err = capsys.readouterr().err
    assert re.search(rf"Secret {secret[0]} key {secret[1]} .*{re.escape(why)}", err), err
    assert err.count("check_secrets:") == 2  # one line for the problem, one summary


def test_check_secrets_accepts_exactly_twelve_character_admin_passwords(tmp_path) -> None:
    check = _check_secrets_module()
    assert (
        check.main(
            _secret_files(tmp_path, {**REAL_VALUES, ("mlflow-auth", "admin_password"): "abcdefghij12"})
        )
        == 0
    )


def test_check_secrets_reads_the_rendered_kustomization(monkeypatch, capsys) -> None:
    """`kubectl kustomize infra/ | check_secrets.py -`: the placeholders are refused in that form too."""
    import io
    import shutil
    import subprocess

    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not on PATH (optional check)")
    rendered = subprocess.run(
        [kubectl, "kustomize", str(INFRA)], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    monkeypatch.setattr("sys.stdin", io.StringIO(rendered))
    assert _check_secrets_module().main(["-"]) == 2
    assert "refusing to deploy: 4 problem(s)" in capsys.readouterr().err


def test_readme_runs_the_secret_check_before_applying() -> None:
    """Every apply of infra/ in the README's commands is chained behind the check (`check && apply`)."""
    readme = (INFRA / "README.md").read_text()
    commands = [
        line for block in re.findall(r"```bash\n(.*?)```", readme, re.S) for line in block.splitlines()
    ]
    applies = [c for c in commands if "kubectl apply -k infra/" in c and "--dry-run" not in c]
    assert applies, "infra/README.md has no `kubectl apply -k infra/` command"
    for line in applies:
        assert re.match(
            r"^python infra/check_secrets\.py infra/ && kubectl apply -k infra/$", line.strip()
        ), line


# ================================================================ tests: references resolve


def _namespaced(kind: str) -> dict[tuple[str, str], dict]:
    return {(d["metadata"].get("namespace"), d["metadata"]["name"]): d for d in objects(kind)}


def test_secret_refs_resolve() -> None:
    secrets = _namespaced("Secret")
    refs = 0
    for path, doc in K8S_OBJECTS:
        ns = doc["metadata"].get("namespace")
        envs = [e for _, pod in pod_specs(doc) for c in containers(pod) for e in c.get("env", [])]
        if doc["kind"] in {"RayCluster", "RayJob"}:
            spec = doc["spec"].get("rayClusterSpec", doc["spec"])
            envs += spec.get("autoscalerOptions", {}).get("env", [])
        for e in envs:
            ref = e.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                refs += 1
                secret = secrets.get((ns, ref["name"]))
                assert secret, f"{rel(path)}: Secret {ns}/{ref['name']} does not exist"
                keys = set(secret.get("stringData", {})) | set(secret.get("data", {}))
                assert ref["key"] in keys, f"{rel(path)}: Secret {ref['name']} has no key {ref['key']}"
    assert refs >= 5


def test_volumes_and_claims_resolve() -> None:
    claims = _namespaced("PersistentVolumeClaim")
    generated = {g["name"] for g in kustomization().get("configMapGenerator", [])}
    for path, doc in K8S_OBJECTS:
        ns = doc["metadata"].get("namespace")
        templates = {t["metadata"]["name"] for t in doc.get("spec", {}).get("volumeClaimTemplates", [])}
        for where, pod in pod_specs(doc):
            volumes = {v["name"]: v for v in pod.get("volumes", [])}
            for c in containers(pod):
                for m in c.get("volumeMounts", []):
                    assert m["name"] in volumes or m["name"] in templates, f"{rel(path)} {where}: {m['name']}"
            for v in volumes.values():
                if "persistentVolumeClaim" in v:
                    assert (ns, v["persistentVolumeClaim"]["claimName"]) in claims, (
                        f"{rel(path)} {where}: {v}"
                    )
                if "configMap" in v:
                    assert v["configMap"]["name"] in generated, f"{rel(path)} {where}: {v}"


def test_models_and_data_are_mounted_on_every_ray_pod() -> None:
    for where, spec in ray_cluster_specs():
        for label, pod in ray_cluster_pods(spec, where):
            mounts = {m["mountPath"]: m for m in pod["containers"][0]["volumeMounts"]}
            assert {"/models", "/data", "/results", "/dev/shm"} <= set(mounts), label
            assert mounts["/models"].get("readOnly") is True, label


def test_selectors_match_pod_labels_and_named_ports() -> None:
    workloads = objects("Deployment") + objects("StatefulSet")
    for w in workloads:
        labels = w["spec"]["template"]["metadata"]["labels"]
        assert w["spec"]["selector"]["matchLabels"].items() <= labels.items(), w["metadata"]["name"]
    for svc in objects("Service"):
        selector = svc["spec"]["selector"]
        pods = [
            w
            for w in workloads
            if selector.items() <= w["spec"]["template"]["metadata"]["labels"].items()
            and w["metadata"]["namespace"] == svc["metadata"]["namespace"]
        ]
        assert len(pods) == 1, f"Service {svc['metadata']['name']} selects {len(pods)} workloads"
        ports = [p for c in pods[0]["spec"]["template"]["spec"]["containers"] for p in c.get("ports", [])]
        for p in svc["spec"]["ports"]:
            target = p.get("targetPort", p["port"])
            assert any(target in (cp.get("name"), cp["containerPort"]) for cp in ports), (
                svc["metadata"]["name"],
                p,
            )
    for sts in objects("StatefulSet"):
        assert any(s["metadata"]["name"] == sts["spec"]["serviceName"] for s in objects("Service"))


# ================================================================ tests: nightly schedule


def test_cronjob_schedule_is_valid() -> None:
    cronjobs = objects("CronJob")
    assert cronjobs
    for cj in cronjobs:
        assert is_valid_cron(cj["spec"]["schedule"]), cj["spec"]["schedule"]
        if "timeZone" in cj["spec"]:
            zoneinfo = pytest.importorskip("zoneinfo")
            try:
                zoneinfo.ZoneInfo(cj["spec"]["timeZone"])
            except zoneinfo.ZoneInfoNotFoundError:
                pytest.fail(f"unknown timeZone {cj['spec']['timeZone']}")


def test_cronjob_creates_the_nightly_rayjob() -> None:
    cj = one("CronJob")
    pod = cj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"] == images()["kubectl"]
    args = container["args"]
    assert args[0] == "create", "a RayJob with generateName needs `kubectl create`, not apply"
    manifest = Path(option(args, "-f"))
    mount = next(m for m in container["volumeMounts"] if manifest.parent == Path(m["mountPath"]))
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    generator = next(
        g for g in kustomization()["configMapGenerator"] if g["name"] == volume["configMap"]["name"]
    )
    files = [INFRA / f for f in generator["files"]]
    assert manifest.name in [f.name for f in files]
    source = next(f for f in files if f.name == manifest.name)
    job_docs = load_docs(source)
    assert [d["kind"] for d in job_docs] == ["RayJob"]
    assert "generateName" in job_docs[0]["metadata"], "each night needs a fresh RayJob name"
    # RBAC: the pod's service account may create RayJobs in the RayJob's namespace.
    sa = pod["serviceAccountName"]
    ns = cj["metadata"]["namespace"]
    assert job_docs[0]["metadata"]["namespace"] == ns
    assert (ns, sa) in _namespaced("ServiceAccount")
    bindings = [
        b
        for b in objects("RoleBinding")
        if b["metadata"]["namespace"] == ns
        and any(
            s["kind"] == "ServiceAccount" and s["name"] == sa and s.get("namespace", ns) == ns
            for s in b["subjects"]
        )
    ]
    assert bindings, f"no RoleBinding for {sa}"
    roles = _namespaced("Role")
    rules = [
        r
        for b in bindings
        if b["roleRef"]["kind"] == "Role"
        for r in roles[(ns, b["roleRef"]["name"])]["rules"]
    ]
    assert any(
        "ray.io" in r["apiGroups"] and "rayjobs" in r["resources"] and "create" in r["verbs"] for r in rules
    )


# ================================================================ tests: kustomization and namespaces


def test_kustomization_lists_every_manifest() -> None:
    k = kustomization()
    listed = set(k["resources"])
    generated = {f for g in k.get("configMapGenerator", []) for f in g.get("files", [])}
    for name in listed | generated:
        assert (INFRA / name).is_file(), f"kustomization names missing file {name}"
    manifest_files = {rel(p).removeprefix("infra/") for p, d in MANIFESTS if d["kind"] != "Kustomization"}
    assert manifest_files == listed | {f for f in generated if f.endswith((".yaml", ".yml"))}
    # Applying the RayJob directly would start a run at apply time.
    rayjob_files = {rel(p).removeprefix("infra/") for p, d in MANIFESTS if d["kind"] == "RayJob"}
    assert not rayjob_files & listed and rayjob_files <= generated


def test_one_namespace_everywhere() -> None:
    ns = kustomization()["namespace"]
    assert one("Namespace")["metadata"]["name"] == ns
    for path, doc in MANIFESTS:
        if doc["kind"] not in {"Namespace", "Kustomization"}:
            assert doc["metadata"].get("namespace") == ns, f"{rel(path)} {doc['kind']}"
        for s in doc.get("subjects", []):
            assert s.get("namespace", ns) == ns


# ================================================================ tests: docs


def test_readme_covers_the_operator_steps() -> None:
    readme = (INFRA / "README.md").read_text()
    for needle in [
        "helm install kuberay-operator",
        "kubectl apply -k infra/",
        "ray job submit --address http://",
        "--working-dir . -- starkv-eval run jobs/smoke.yaml",
        "RAY_AUTH_MODE",
        "MLFLOW_TRACKING_URI",
        "/models/UI-TARS-1.5-7B",
        "/data",
        "runtime_env",
        "RayCronJob",
        "--app-name basic-auth",
        "MLFLOW_TRACKING_USERNAME",
        "python infra/check_secrets.py infra/",
    ]:
        assert needle in readme, f"infra/README.md does not mention {needle!r}"


def test_kustomize_renders_when_kubectl_is_available() -> None:
    """Optional: where kubectl is installed (CI images often have it), render the kustomization offline."""
    import shutil
    import subprocess

    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not on PATH (optional check)")
    rendered = subprocess.run(
        [kubectl, "kustomize", str(INFRA)], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    configmaps = {d["metadata"]["name"] for d in docs if d["kind"] == "ConfigMap"}
    cronjob = next(d for d in docs if d["kind"] == "CronJob")
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    mounted = [
        v["configMap"]["name"]
        for pod in (
            cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"],
            deployment["spec"]["template"]["spec"],
        )
        for v in pod["volumes"]
        if "configMap" in v
    ]
    # kustomize renamed both generated ConfigMaps (hash suffix) and the pods follow the new names
    assert sorted(mounted) == sorted(configmaps) and len(configmaps) == 2
    assert {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"} == {
        kustomization()["namespace"]
    }
