"""`curate merge`: combine the shard tables of one scoring run (`--num-shards N --shard-index i`) into one table."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from syllabus.core.table import DERIVED_KEYS, Table, TableError, read_table, write_table
from syllabus.core.workdir import TABLE, RunDirError, describe_output, held_output, replace_output

# Metadata that must agree between shards of one run (the config minus its shard index).
_SHARED_KEYS = ("student", "teacher", "teacher_from", "tokenizer_sha256", "template", "fields", "generation", "engines")
_SHOWN = 5


def merge_tables(shard_paths: list[str | Path], out: str | Path, overwrite: bool = False) -> Table:
    """Merge shard tables after checking they belong together.

    Args:
        shard_paths: the shard tables of one `curate score --num-shards N` run, each once.
        out: the merged table's directory: new or empty, or (with `overwrite`) a difficulty table to replace.
        overwrite: replace `out` if it holds a difficulty table; anything else there is refused all the same.

    Raises:
        TableError: shards of different runs or datasets, a shard missing or given twice, a sample in two shards,
            a table that is not a shard; or an `out` that is one of the shards, or that is taken (named).
    """
    if not shard_paths:
        raise TableError("merge needs at least one shard table")
    out = Path(out)
    _check_out(out, [Path(p) for p in shard_paths], overwrite)
    tables = [read_table(p) for p in shard_paths]
    shards = [_shard_of(t) for t in tables]
    first = tables[0].metadata
    num_shards = shards[0][1]
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
    indices = [index for index, _ in shards]
    if sorted(indices) != list(range(num_shards)):
        missing = sorted(set(range(num_shards)) - set(indices))
        repeated = sorted({i for i in indices if indices.count(i) > 1})
        raise TableError(
            f"a run with {num_shards} shards needs each shard once; missing {missing or 'none'}, "
            f"repeated {repeated or 'none'}"
        )
    ordered = [t for _, t in sorted(zip(indices, tables), key=lambda pair: pair[0])]  # in shard order
    frame = pl.concat([t.frame for t in ordered], how="diagonal_relaxed")
    if {"source_file", "source_line"} <= set(frame.columns):
        frame = frame.sort(["source_file", "source_line"])  # back to input order
    repeated_ids = frame.filter(frame["sample_id"].is_duplicated())["sample_id"].unique(maintain_order=True)
    if repeated_ids.len():
        more = f" and {repeated_ids.len() - _SHOWN} more" if repeated_ids.len() > _SHOWN else ""
        raise TableError(
            f"{repeated_ids.len()} sample_id{'s are' if repeated_ids.len() > 1 else ' is'} in more than one shard: "
            f"{', '.join(repeated_ids.head(_SHOWN).to_list())}{more}; were the shards scored from different inputs?"
        )
    metadata = {k: v for k, v in first.items() if k not in DERIVED_KEYS}
    metadata["shard"] = {"num_shards": 1, "shard_index": 0, "merged_from": [str(t.path) for t in tables]}
    metadata["config"] = {**first["config"], "num_shards": 1, "shard_index": 0}
    if overwrite:
        try:
            replace_output(out, TABLE)
        except RunDirError as err:
            raise TableError(str(err)) from None
    if first.get("teacher_topk"):  # the shards' caches, as one (each shard's parts, linked, in shard order)
        from syllabus.core.topk_cache import (
            CACHE_DIR,
            CacheError,
            cache_info,
            cache_parts,
            read_cache_record,
            write_cache,
        )

        sources = [t.path / CACHE_DIR for t in ordered]
        try:
            parts = [part for source in sources for part in cache_parts(source)]
            metadata["teacher_topk"] = write_cache(parts, out / CACHE_DIR, cache_info(read_cache_record(sources[0])))
        except CacheError as err:
            raise TableError(f"{err}; the shards were scored with --teacher-topk, so their caches are merged too") from None
    return write_table(frame, out, metadata)


def _check_out(out: Path, inputs: list[Path], overwrite: bool) -> None:
    """Refuse, before any work, an --out that is an input, a file, or taken by anything but a table to replace."""
    resolved = out.resolve()
    if any(resolved == p.resolve() or resolved in p.resolve().parents for p in inputs):
        raise TableError(f"--out {out} is one of the tables to merge (or holds one); choose another directory")
    if out.exists() and not out.is_dir():
        raise TableError(f"--out {out} is a file; give a directory")
    try:
        if not out.exists() or not any(out.iterdir()):
            return
        held, what = held_output(out), describe_output(out)
    except RunDirError as err:
        raise TableError(str(err)) from None
    if held != TABLE:
        only = " (--overwrite replaces only a difficulty table)" if overwrite else ""
        raise TableError(f"--out {out} holds {what}{only}; choose another directory")
    if not overwrite:
        raise TableError(f"--out {out} holds {what}; choose another directory, or pass --overwrite to replace it")


def _shard_of(table: Table) -> tuple[int, int]:
    """(shard index, number of shards) from a shard table's metadata."""
    shard, config = table.metadata.get("shard"), table.metadata.get("config")
    try:
        index, count = int(shard["shard_index"]), int(shard["num_shards"])
    except (KeyError, TypeError, ValueError):
        index = count = None
    if index is None or not isinstance(config, dict) or not 0 <= index < count:
        raise TableError(f"{table.path}: not a shard of a `curate score --num-shards N` run (its metadata.json has "
                         "no valid shard and config settings); merge only the shard tables of one run")
    return index, count
