"""Every built-in compressor documents its fields in one numpydoc ``Parameters`` section and cites its paper."""

from __future__ import annotations

import dataclasses
import inspect
import re

import pytest

import starkv
from starkv.compressor import COMPRESSORS

#: methods without a paper: reference points only
NO_PAPER = {"full", "random"}
ARXIV = re.compile(r"https://arxiv\.org/abs/\d{4}\.\d{4,5}\b")


def builtin_names() -> list[str]:
    """Registered names whose class ships with the project (test plugins are left out)."""
    starkv.available()  # imports the built-in methods
    return sorted(n for n, cls in COMPRESSORS.items() if cls.__module__.split(".")[0] in ("starkv", "baselines"))


def documented_parameters(cls: type) -> dict[str, str]:
    """``name -> type`` of each entry of the class docstring's ``Parameters`` section (empty if none)."""
    lines = inspect.cleandoc(cls.__doc__ or "").splitlines()
    try:
        start = next(i for i in range(len(lines) - 1)
                     if lines[i] == "Parameters" and set(lines[i + 1]) == {"-"}) + 2
    except StopIteration:
        return {}
    entries = {}
    for i in range(start, len(lines)):
        if i + 1 < len(lines) and lines[i + 1] and set(lines[i + 1]) == {"-"}:
            break  # next section
        match = re.fullmatch(r"(\w+) : (\S.*)", lines[i])
        if match:
            described = i + 1 < len(lines) and lines[i + 1].startswith("    ") and lines[i + 1].strip()
            assert described, f"{cls.__name__}: parameter {match[1]!r} has no description"
            entries[match[1]] = match[2]
    return entries


def test_builtin_registry_is_found():
    assert {"full", "random", "snapkv", "pyramidkv", "guikv", "streamingllm", "vlcache", "starkv"} <= set(
        builtin_names())


@pytest.mark.parametrize("cls", [starkv.Compressor, starkv.ScorerCompressor], ids=lambda c: c.__name__)
def test_base_classes_document_their_fields(cls):
    assert set(documented_parameters(cls)) == {f.name for f in dataclasses.fields(cls)}


@pytest.mark.parametrize("name", builtin_names())
def test_parameters_section_names_every_field(name):
    cls = COMPRESSORS[name]
    documented = documented_parameters(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    assert documented, f"{name}: class docstring has no numpydoc Parameters section"
    assert set(documented) == fields, (
        f"{name}: undocumented {sorted(fields - set(documented))}, stale {sorted(set(documented) - fields)}")


@pytest.mark.parametrize("name", builtin_names())
def test_docstring_links_the_paper(name):
    doc = COMPRESSORS[name].__doc__ or ""
    if name in NO_PAPER:
        assert "no paper" in doc.lower(), f"{name}: say briefly that there is no paper"
    else:
        assert ARXIV.search(doc), f"{name}: class docstring lacks an https://arxiv.org/abs/... link"
