"""The teacher's top-K cache: what the teacher predicted at every ground-truth response token, kept beside the
difficulty table so that training needs no teacher model (`curate score --teacher-topk K`, `train run
--teacher cached`).

A cache is a directory inside its table::

    TABLE/teacher-topk/
      part-00000.parquet ...   one row per sample: sample_id, teacher_ce, and the top K at its T response tokens
      cache.json               K, teacher, tokenizer, parts and row counts, fingerprint; written last ("complete")

Per sample (row), at temperature 1 and in token order, the lists are flat, row-major:

    topk_ids        int32   (T * K)  the teacher's K most probable next-token ids, most probable first
    topk_log_probs  float32 (T * K)  their log-probabilities
    topk_log_tail   float32 (T,)     log of the probability of every other id (a log-sum-exp, not log(1 - mass))

The parts are the scoring pass's own (the teacher-forcing pass writes them, resumable part by part) in row groups of
`ROW_GROUP_ROWS` samples, so that a training step reads the few rows it needs, not whole parts. Every page carries a
CRC that reading checks. The cache's fingerprint covers K, the teacher, the tokenizer and every row's sample id, token
count and teacher CE: the table records it (and so does the table's own fingerprint), and the trainer refuses a cache
whose fingerprint is not the one its table names.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from .io import JSONFileError, atomic_write_json, read_json, writing
from .logits import TopK
from .table import TOPK_CACHE_DIR as CACHE_DIR
from .table import part_name

CACHE_FILE = "cache.json"
COLUMNS = ("topk_ids", "topk_log_probs", "topk_log_tail")
FLOAT_COLUMNS = ("topk_log_probs", "topk_log_tail")  # written byte-stream-split: zstd then finds the exponents
# a cache's provenance, in cache.json; teacher_vocab_size (its lm_head rows) is absent from caches scored before it
INFO_KEYS = ("k", "teacher", "teacher_vocab_size", "tokenizer_sha256", "dataset_fingerprint")
_CHECKED_COLUMNS = ("sample_id", "teacher_ce", "topk_log_tail")  # what the fingerprints are computed from
ROW_GROUP_ROWS = 32  # samples per row group: what a training step reads to get one sample
CACHED_GROUPS = 64  # decoded row groups kept in memory by a reader (an epoch's micro-batches come back to them)


class CacheError(ValueError):
    """A top-K cache is missing, incomplete, damaged, or not the one the table or the run needs."""


def topk_columns(tops: list[TopK]) -> dict[str, pa.Array]:
    """The cache columns of a part: one list per sample, from each sample's (T, K) `TopK`."""
    k = tops[0].ids.shape[1] if tops else 0
    token_offsets = np.concatenate([[0], np.cumsum([t.log_tail.numel() for t in tops])]).astype(np.int64)

    def flat(tensors: list[torch.Tensor], dtype: Any) -> pa.Array:
        return pa.array(np.concatenate([t.numpy().reshape(-1) for t in tensors] or [np.empty(0)]).astype(dtype))

    return {
        "topk_ids": pa.LargeListArray.from_arrays(token_offsets * k, flat([t.ids for t in tops], np.int32)),
        "topk_log_probs": pa.LargeListArray.from_arrays(token_offsets * k, flat([t.log_probs for t in tops], np.float32)),
        "topk_log_tail": pa.LargeListArray.from_arrays(token_offsets, flat([t.log_tail for t in tops], np.float32)),
    }


def row_topk(ids: np.ndarray, log_probs: np.ndarray, log_tail: np.ndarray) -> TopK:
    """One sample's `TopK` (T, K) from its three flat cache lists."""
    tokens = len(log_tail)
    k = len(ids) // tokens if tokens else 0
    return TopK(*(torch.from_numpy(a.copy()) for a in (ids.reshape(tokens, k), log_probs.reshape(tokens, k), log_tail)))


def cache_fingerprint(k: int, teacher_sha256: str | None, tokenizer_sha256: str, rows: list[tuple]) -> str:
    """A content hash of a cache: K, the teacher's weights, the tokenizer, and each (sample_id, response tokens,
    teacher CE) in sample-id order. Two caches with one fingerprint hold the same teacher's top K of the same rows."""
    h = hashlib.sha256(json.dumps([k, teacher_sha256, tokenizer_sha256]).encode())
    for row in sorted(rows):
        h.update(repr(row).encode())
    return h.hexdigest()


def part_rows(table: pa.Table) -> list[tuple]:
    """(sample_id, response tokens, teacher CE) of each row of a part read with sample_id, teacher_ce and
    topk_log_tail: what the fingerprints cover."""
    lengths = pc.list_value_length(table["topk_log_tail"]).to_pylist()
    return list(zip(table["sample_id"].to_pylist(), lengths, table["teacher_ce"].to_pylist()))


def read_cache_record(path: Path) -> dict[str, Any]:
    """A finished cache's cache.json.

    Raises:
        CacheError: none there (scored without --teacher-topk, or unfinished), or not valid JSON.
    """
    try:
        return read_json(path / CACHE_FILE)
    except FileNotFoundError:
        raise CacheError(f"{path}: no {CACHE_FILE}, so no finished top-K cache; score the table with "
                         "`curate score --teacher-topk K` (a run that stopped resumes with the same command)") from None
    except JSONFileError as err:
        raise CacheError(str(err)) from None


def cache_info(record: dict[str, Any]) -> dict[str, Any]:
    """The provenance of a cache (`INFO_KEYS`), to write it again elsewhere (`write_cache`)."""
    return {key: record.get(key) for key in INFO_KEYS}


def cache_parts(path: Path) -> list[Path]:
    """A finished cache's part files, in order."""
    return [path / name for name in sorted(read_cache_record(path)["parts"])]


def write_cache(parts: list[Path], out: Path, info: dict[str, Any]) -> dict[str, Any]:
    """Gather finished scoring parts into `out` (hard links where the file system allows, else copies) and write
    `cache.json` last. Returns what the table records of the cache.

    Args:
        parts: the teacher-forcing pass's parts, each holding sample_id, teacher_ce and the `COLUMNS`.
        out: the cache directory (replaced).
        info: k, teacher (identity), tokenizer_sha256, dataset_fingerprint: the cache's provenance.
    """
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    counts: dict[str, int] = {}
    rows: list[tuple] = []
    part_fingerprints: dict[str, str] = {}  # each part checked on its own when the cache is opened
    tokens = 0
    for k, part in enumerate(parts):
        name = part_name(k)
        with writing(out / name, "teacher top-K cache part"):
            try:
                os.link(part, out / name)
            except OSError:  # another file system, or no hard links there
                shutil.copyfile(part, out / name)
        these = part_rows(pq.read_table(out / name, columns=list(_CHECKED_COLUMNS)))
        rows += these
        counts[name] = len(these)
        tokens += sum(length for _, length, _ in these)
        part_fingerprints[name] = cache_fingerprint(info["k"], None, None, these)  # its rows alone
    teacher_sha = (info.get("teacher") or {}).get("weights_sha256")
    size = sum((out / name).stat().st_size for name in counts)
    record = {
        "kind": "teacher_topk",
        "schema_version": 1,
        **info,
        "num_rows": len(rows),
        "response_tokens": tokens,
        "bytes": size,
        "bytes_per_token": round(size / max(1, tokens), 1),
        "parts": counts,
        "part_fingerprints": part_fingerprints,
        "cache_fingerprint": cache_fingerprint(info["k"], teacher_sha, info["tokenizer_sha256"], rows),
    }
    atomic_write_json(out / CACHE_FILE, record)
    return {"path": CACHE_DIR, "k": info["k"], "teacher": info.get("teacher"),
            "cache_fingerprint": record["cache_fingerprint"]}


@dataclass(frozen=True)
class _Where:
    part: str
    group: int
    row: int


class TopKCache:
    """A finished cache, read for training: `bins(sample_ids)` returns the samples' `TopK` rows, reading only the
    row groups that hold them (the last `CACHED_GROUPS` decoded ones are kept).

    Raises (on open):
        CacheError: no cache.json (scoring without --teacher-topk, or unfinished), a part missing, extra, with
            another row count than cache.json says, or with other rows or teacher CEs than it was written with
            (named: a part of another teacher's cache put in its place).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.record = read_cache_record(self.path)
        listed = self.record.get("parts") or {}
        present = {p.name for p in self.path.glob("part-*.parquet")}
        if set(listed) != present:
            missing, extra = sorted(set(listed) - present), sorted(present - set(listed))
            raise CacheError(f"{self.path}: its parts are not the ones {CACHE_FILE} lists (missing: "
                             f"{', '.join(missing) or 'none'}; not listed: {', '.join(extra) or 'none'}); score the "
                             "table again with --teacher-topk")
        self.k = int(self.record["k"])
        self.teacher_vocab_size: int | None = self.record.get("teacher_vocab_size")
        self.fingerprint: str = self.record["cache_fingerprint"]
        self._files: dict[str, pq.ParquetFile] = {}
        self._where: dict[str, _Where] = {}
        self._groups: OrderedDict[tuple[str, int], dict[str, Any]] = OrderedDict()
        rows: list[tuple] = []
        for name, count in sorted(listed.items()):
            file = self._file(name)
            if file.metadata.num_rows != count:
                raise CacheError(f"{self.path / name}: {file.metadata.num_rows} rows, {CACHE_FILE} says {count}; "
                                 "score the table again with --teacher-topk")
            these = part_rows(file.read(columns=list(_CHECKED_COLUMNS)))  # one read per part
            self._check_part(name, these)
            rows += these
            ids = iter(sid for sid, _, _ in these)
            for group in range(file.num_row_groups):
                self._where.update((next(ids), _Where(name, group, row))
                                   for row in range(file.metadata.row_group(group).num_rows))
        teacher_sha = (self.record.get("teacher") or {}).get("weights_sha256")
        if "part_fingerprints" not in self.record and cache_fingerprint(
                self.k, teacher_sha, self.record.get("tokenizer_sha256"), rows) != self.fingerprint:
            raise CacheError(f"{self.path}: its parts are not the ones {CACHE_FILE} was written for (their rows or "
                             f"teacher CEs differ: another teacher's or another table's parts, or an edited "
                             f"{CACHE_FILE}?); score the table again with --teacher-topk")

    def _check_part(self, name: str, rows: list[tuple]) -> None:
        """Refuse a part whose rows are not those cache.json was written for (caches from before per-part
        fingerprints are checked as a whole, after every part is read)."""
        expected = (self.record.get("part_fingerprints") or {}).get(name)
        if expected is not None and cache_fingerprint(self.k, None, None, rows) != expected:
            raise CacheError(f"{self.path / name}: not the part {CACHE_FILE} was written for (its rows or teacher "
                             "CEs differ: another teacher's or another table's part?); score the table again with "
                             "--teacher-topk, or copy the table and its cache together")

    def missing(self, sample_ids: list[str]) -> list[str]:
        return [s for s in sample_ids if s not in self._where]

    def bins(self, sample_ids: list[str]) -> list[TopK]:
        """Each sample's (T, K) top K, in the order given.

        Raises:
            CacheError: a sample the cache does not hold, or a part that no longer reads (its checksum).
        """
        out = []
        for sid in sample_ids:
            where = self._where.get(sid)
            if where is None:
                raise CacheError(f"{self.path}: no row for sample {sid}")
            group = self._group(where.part, where.group)
            out.append(row_topk(*(group[c][where.row] for c in COLUMNS)))
        return out

    def _file(self, name: str) -> pq.ParquetFile:
        if name not in self._files:
            try:
                self._files[name] = pq.ParquetFile(self.path / name, page_checksum_verification=True)
            except (OSError, pa.ArrowException) as err:
                raise CacheError(f"{self.path / name}: not readable Parquet ({err}); score the table again with "
                                 "--teacher-topk") from None
        return self._files[name]

    def _group(self, part: str, group: int) -> dict[str, list[np.ndarray]]:
        key = (part, group)
        if key in self._groups:
            self._groups.move_to_end(key)
            return self._groups[key]
        try:
            table = self._file(part).read_row_group(group, columns=list(COLUMNS))
        except (OSError, pa.ArrowException) as err:
            raise CacheError(f"{self.path / part}, row group {group}: does not read back ({err}); score the table "
                             "again with --teacher-topk") from None
        decoded = {c: _lists(table[c]) for c in COLUMNS}
        self._groups[key] = decoded
        if len(self._groups) > CACHED_GROUPS:
            self._groups.popitem(last=False)
        return decoded


def _lists(column: pa.ChunkedArray) -> list[np.ndarray]:
    """A list column as one numpy array per row (views into one buffer)."""
    array = column.combine_chunks()
    values = array.flatten().to_numpy(zero_copy_only=False)
    offsets = array.offsets.to_numpy() - array.offsets[0].as_py()  # flatten() starts at the first row's values
    return [values[offsets[i]:offsets[i + 1]] for i in range(len(array))]
