"""Where Multimodal-Mind2Web comes from: the HF dataset repo ``osunlp/Multimodal-Mind2Web`` (OpenRAIL).

The repo holds parquet shards ``data/<split>-NNNNN-of-MMMMM-<hash>.parquet`` for ``train``,
``test_task`` (5 shards), ``test_website`` (4) and ``test_domain`` (11), each shard a few hundred MB
(full-page screenshots inside). The fetch takes the three test splits by default (``--split`` picks
others), in the repo's own layout, which is the loader's.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.benchmarks.common.fetch import FetchSpec, HubSource, register_fetch, shard_count_problems

REPO_ID = "osunlp/Multimodal-Mind2Web"
ALL_SPLITS = ("train", "test_task", "test_website", "test_domain")
DEFAULT_SPLITS = ("test_task", "test_website", "test_domain")


def _verify(path: Path, spec: FetchSpec) -> list[str]:
    """Every split has all of its ``-of-MMMMM`` shards."""
    problems: list[str] = []
    for split in spec.splits:
        problems += shard_count_problems(sorted((path / "data").glob(f"{split}-*.parquet")), f"mind2web {split}")
    return problems


@register_fetch("mind2web")
def spec() -> FetchSpec:
    return FetchSpec(name="mind2web", source=HubSource(REPO_ID), include=("data/{split}-*.parquet",),
                     splits=DEFAULT_SPLITS, all_splits=ALL_SPLITS, options={"split": "{split}"}, verify=_verify)
