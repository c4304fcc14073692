"""Refuse to deploy placeholder secrets: run before ``kubectl apply -k infra/`` (infra/README.md, "Secrets").

The Secrets in infra/ ship with the placeholder ``change-me-before-applying``. Applied as they are, the
MLflow database, the MLflow admin account and the Ray cluster would all open with a password anyone can
read in this repository. This check reads the Secrets that an apply would send and refuses placeholders,
empty values, MLflow's old default admin password and values the services would reject (too short, or a
database password that cannot go into the ``postgresql://`` URI unescaped). It prints one line per problem
(never a secret value) and exits 2; 0 when every Secret holds real values.

Usage::

    python infra/check_secrets.py infra/                                 # the files kustomization.yaml lists
    kubectl kustomize infra/ | python infra/check_secrets.py -          # what `kubectl apply -k` would send

Standard library and PyYAML only, so it runs anywhere ``kubectl`` does.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import re
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml

#: Values that are known to everyone: the placeholder in this repository, MLflow's pre-3.x default admin
#: password (https://github.com/advisories/GHSA-gq3w-7jj3-x7gr) and the usual suspects.
KNOWN_PLACEHOLDERS = ("change-me", "changeme", "replace-me", "placeholder", "password1234", "<")
#: Characters that need no escaping in the userinfo of a URI (RFC 3986 "unreserved").
URL_SAFE = re.compile(r"[A-Za-z0-9._~-]+")


@dataclass(frozen=True)
class Rule:
    """What one Secret key must satisfy besides not being a placeholder.

    Attributes
    ----------
    min_length : int
        Shortest accepted value (MLflow refuses admin passwords under 12 characters).
    url_safe : bool
        The value is spliced into a URI unescaped (the database password).
    why : str
        Where the value goes, for the message.
    """

    min_length: int = 1
    url_safe: bool = False
    why: str = ""


#: (Secret name, key) -> rule, for the Secrets the manifests in infra/ reference.
RULES: dict[tuple[str, str], Rule] = {
    ("mlflow-postgres", "password"): Rule(16, True, "it goes into the postgresql:// URIs of MLflow"),
    ("mlflow-auth", "admin_username"): Rule(1, False, "the MLflow admin account"),
    ("mlflow-auth", "admin_password"): Rule(12, False, "MLflow refuses admin passwords under 12 characters"),
    ("mlflow-auth", "flask_secret_key"): Rule(16, False, "the CSRF key of MLflow's auth app"),
    ("starkv-ray-auth", "auth_token"): Rule(16, False, "the Ray cluster's auth token"),
}
#: Keys that are not secret: a well-known value is fine there (an admin called "admin").
NOT_SECRET = {("mlflow-auth", "admin_username")}


@dataclass(frozen=True)
class SecretDoc:
    """One Secret as an apply would send it: where it came from, its name and its decoded values."""

    source: str
    name: str
    values: dict[str, str]


def kustomize_files(folder: Path) -> list[Path]:
    """The manifest files a ``kustomization.yaml`` lists (nested kustomizations followed)."""
    kfile = next((folder / n for n in ("kustomization.yaml", "kustomization.yml", "Kustomization")
                  if (folder / n).is_file()), None)
    if kfile is None:
        raise FileNotFoundError(f"{folder} has no kustomization.yaml")
    k = yaml.safe_load(kfile.read_text()) or {}
    out: list[Path] = []
    for entry in k.get("resources", []):
        path = folder / entry
        out += kustomize_files(path) if path.is_dir() else [path]
    return out


def load_documents(args: Iterable[str]) -> Iterator[tuple[str, dict]]:
    """(source, document) for every YAML document named: ``-`` is stdin, a folder its kustomization."""
    for arg in args:
        if arg == "-":
            for doc in yaml.safe_load_all(sys.stdin.read()):
                yield "<stdin>", doc
            continue
        path = Path(arg)
        files = kustomize_files(path) if path.is_dir() else [path]
        for f in files:
            for doc in yaml.safe_load_all(f.read_text()):
                yield str(f), doc


def secrets_in(docs: Iterable[tuple[str, dict]]) -> tuple[list[SecretDoc], list[str]]:
    """The Secrets among ``docs`` with their values decoded; plus problems found while decoding."""
    found, problems = [], []
    for source, doc in docs:
        if not isinstance(doc, dict) or doc.get("kind") != "Secret":
            continue
        name = (doc.get("metadata") or {}).get("name", "?")
        values = {k: "" if v is None else str(v) for k, v in (doc.get("stringData") or {}).items()}
        for key, raw in (doc.get("data") or {}).items():
            try:
                values.setdefault(key, base64.b64decode(str(raw or ""), validate=True).decode())
            except (binascii.Error, UnicodeDecodeError):
                problems.append(f"{source}: Secret {name} key {key}: `data` is not base64-encoded UTF-8")
        found.append(SecretDoc(source, name, values))
    return found, problems


def value_problem(name: str, key: str, value: str) -> str | None:
    """Why ``value`` must not be deployed, or None when it may."""
    if not value.strip():
        return "is empty"
    lowered = value.lower()
    if (name, key) not in NOT_SECRET:
        hit = next((p for p in KNOWN_PLACEHOLDERS if p in lowered), None)
        if hit is not None:
            return f"still holds a placeholder ({hit!r}): put a generated value there (`openssl rand -hex 24`)"
    rule = RULES.get((name, key))
    if rule is None:
        return None
    if len(value) < rule.min_length:
        return f"is {len(value)} characters, at least {rule.min_length} needed ({rule.why})"
    if rule.url_safe and not URL_SAFE.fullmatch(value):
        return f"has characters that need escaping in a URI; use only A-Z a-z 0-9 . _ ~ - ({rule.why})"
    return None


def check(docs: Iterable[tuple[str, dict]]) -> list[str]:
    """Every problem of the Secrets in ``docs``, one line each; empty when they may be applied."""
    secrets, problems = secrets_in(docs)
    for s in secrets:
        for key, value in s.values.items():
            why = value_problem(s.name, key, value)
            if why:
                problems.append(f"{s.source}: Secret {s.name} key {key} {why}")
        for (name, key), _ in RULES.items():
            if name == s.name and key not in s.values:
                problems.append(f"{s.source}: Secret {s.name} has no key {key}")
    mlflow_auth = {s.name: s.values for s in secrets}.get("mlflow-auth", {})
    if mlflow_auth.get("admin_password") and mlflow_auth.get("admin_password") == mlflow_auth.get("admin_username"):
        problems.append("Secret mlflow-auth: admin_password equals admin_username")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="check_secrets.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="*", default=[str(Path(__file__).resolve().parent)],
                        help="manifest files, folders with a kustomization.yaml, or - for stdin (default: infra/)")
    args = parser.parse_args(argv)
    try:
        docs = list(load_documents(args.paths))
    except (OSError, yaml.YAMLError) as err:
        print(f"check_secrets: cannot read the manifests: {err}".splitlines()[0], file=sys.stderr)
        return 2
    secrets, _ = secrets_in(docs)
    problems = check(docs)
    for line in problems:
        print(f"check_secrets: {line}", file=sys.stderr)
    if problems:
        print(f"check_secrets: refusing to deploy: {len(problems)} problem(s); see infra/README.md, \"Secrets\"",
              file=sys.stderr)
        return 2
    missing = sorted({n for n, _ in RULES} - {s.name for s in secrets})
    note = f"; not in these manifests (create them in the cluster yourself): {', '.join(missing)}" if missing else ""
    print(f"check_secrets: {len(secrets)} Secret(s) hold real values{note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
