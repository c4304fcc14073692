"""Where AndroidControl comes from: the public bucket ``gs://gresearch/android_control`` (Apache-2.0).

The bucket holds the GZIP TFRecord shards ``android_control-000NN-of-00020`` and ``splits.json``; the
fetch copies them into one folder, the loader's layout, reading the bucket anonymously with gcsfs (the
``gcs`` extra). GCS publishes an md5 (or crc32c) per object, checked on every shard.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.benchmarks.common.fetch import FetchSpec, GcsSource, register_fetch, shard_count_problems

BUCKET_PATH = "gresearch/android_control"


def _verify(path: Path, spec: FetchSpec) -> list[str]:
    """``splits.json`` and all ``-of-NNNNN`` shards."""
    problems = [] if (path / "splits.json").is_file() else [f"androidcontrol: {path}/splits.json is missing"]
    return problems + shard_count_problems(sorted(path.glob("android_control-*")), "androidcontrol")


@register_fetch("androidcontrol")
def spec() -> FetchSpec:
    return FetchSpec(name="androidcontrol", source=GcsSource(BUCKET_PATH),
                     include=("android_control-*", "splits.json"), options={"split": "test"}, verify=_verify)
