"""`curate merge`: combine the shard tables of one scoring run (`--num-shards N --shard-index i`) into one table."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from syllabus.core.table import Table, TableError, read_table, write_table

# Metadata that must agree between shards of one run (the config minus its shard index).
_SHARED_KEYS = ("student", "teacher", "teacher_from", "tokenizer_sha256", "template", "fields", "generation", "engines")


def merge_tables(shard_paths: list[str | Path], out: str | Path) -> Table:
    """Merge shard tables after checking they belong together.

    Raises:
        TableError: shards of different runs or datasets, a shard missing or given twice, or a sample in two shards.
    """
    if not shard_paths:
        raise TableError("merge needs at least one shard table")
    tables = [read_table(p) for p in shard_paths]
    first = tables[0].metadata
    num_shards = first.get("shard", {}).get("num_shards")
    for t in tables[1:]:
        for key in _SHARED_KEYS:
            if t.metadata.get(key) != first.get(key):
                raise TableError(f"{t.path} and {tables[0].path} differ in {key!r}: they are not shards of one run")
        if t.metadata.get("dataset", {}).get("fingerprint") != first.get("dataset", {}).get("fingerprint"):
            raise TableError(f"{t.path} and {tables[0].path} were scored from different datasets")
        config_a = {k: v for k, v in first["config"].items() if k != "shard_index"}
        config_b = {k: v for k, v in t.metadata["config"].items() if k != "shard_index"}
        if config_a != config_b:
            diff = sorted(k for k in config_a if config_a[k] != config_b.get(k))
            raise TableError(f"{t.path} was scored with other settings than {tables[0].path}: {', '.join(diff)}")
    indices = [t.metadata["shard"]["shard_index"] for t in tables]
    if sorted(indices) != list(range(num_shards)):
        missing = sorted(set(range(num_shards)) - set(indices))
        repeated = sorted({i for i in indices if indices.count(i) > 1})
        raise TableError(
            f"a run with {num_shards} shards needs each shard once; missing {missing or 'none'}, repeated {repeated or 'none'}"
        )
    frame = pl.concat([t.frame for t in sorted(tables, key=lambda t: t.metadata["shard"]["shard_index"])], how="diagonal_relaxed")
    if {"source_file", "source_line"} <= set(frame.columns):
        frame = frame.sort(["source_file", "source_line"])  # back to input order
    if frame["sample_id"].is_duplicated().any():
        raise TableError("a sample_id appears in two shards; were the shards scored from different inputs?")
    metadata = {k: v for k, v in first.items() if k not in ("table_fingerprint", "num_rows", "columns")}
    metadata["shard"] = {"num_shards": 1, "shard_index": 0, "merged_from": [str(t.path) for t in tables]}
    metadata["config"] = {**first["config"], "num_shards": 1, "shard_index": 0}
    return write_table(frame, out, metadata)
