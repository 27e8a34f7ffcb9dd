"""Atomic file writes: every output goes to a temporary file in its directory and is renamed into place, so a crash
never leaves a half-written file behind (datatrove's habit; the completion markers of tables, schedules and runs
rely on it). And the one way to read those JSON files back, with errors that name the file, line and column, and
the one JSONL reader (`jsonl_lines`)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator

if TYPE_CHECKING:
    import polars as pl


class JSONFileError(ValueError):
    """A JSON file that does not parse; the message names the file, and the line and column where there is one."""


class WriteError(OSError):
    """An output could not be written (disk full, no permission): the message names it, the space left there and
    what to do."""


@contextmanager
def writing(path: Path, what: str, cleanup: bool = False) -> Iterator[None]:
    """Turn a failed write inside the block into a `WriteError` that names `what` and `path`.

    torch's serializer reports a full disk as a RuntimeError ("PytorchStreamWriter failed writing file", "unexpected
    pos"), so RuntimeErrors count too: use this only around code that writes already-built data.

    Args:
        path: what the block writes (a file, or a temporary directory).
        what: its name for the message.
        cleanup: remove `path` (a temporary directory) after a failure, so that a full disk gets its space back.
    """
    try:
        yield
    except (OSError, RuntimeError) as exc:
        if cleanup:
            shutil.rmtree(path, ignore_errors=True)
        if isinstance(exc, WriteError):  # named already, by a write inside the block
            raise
        free = free_mib(path)
        raise WriteError(f"cannot write the {what} to {path} ({exc}); {free:,.0f} MiB free there. Free some space "
                         "(or fix the permissions) and run the same command again: finished work is kept") from exc


def free_mib(path: Path) -> float:
    """The free space, in MiB, of the file system `path` is (or would be) on: its nearest existing ancestor's."""
    where = next((p for p in (path, *path.parents) if p.exists()), Path("/"))
    return shutil.disk_usage(where).free / 2**20


def read_json(path: Path) -> Any:
    """Parse a JSON file.

    Raises:
        JSONFileError: the file is not UTF-8 text, or not valid JSON (a truncated or hand-edited file).
        OSError: the file cannot be read.
    """
    data = path.read_bytes()
    try:
        return json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise JSONFileError(f"{path}: not UTF-8 text (byte {err.start}), so not valid JSON") from None
    except json.JSONDecodeError as err:
        raise JSONFileError(f"{path}, line {err.lineno} column {err.colno}: not valid JSON ({err.msg})") from None


@contextmanager
def _replaced(path: Path, what: str) -> Iterator[Path]:
    """A temporary file beside `path` for the block to write: renamed onto `path` when the block succeeds, removed
    when it fails. A failed write raises `WriteError` (`writing`)."""
    with writing(path, what):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        tmp = Path(name)
        try:
            yield tmp
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


UTF8_BOM = b"\xef\xbb\xbf"
BLANK = "blank line"


def jsonl_lines(lines: Iterable[bytes]) -> Iterator[tuple[int, dict[str, Any] | None, str | None]]:
    """Every line of a JSONL file as (1-based line, the JSON object or None, what is wrong with it or None); blank
    lines come as (line, None, BLANK). Lines are bytes split at "\n" only (str.splitlines would also split inside
    a record, at U+2028), so that one undecodable line does not fail the file; a UTF-8 byte-order mark is dropped.
    The caller decides what a bad line means: a reject with its reason (curate), or an error (evaluate)."""
    for line_no, raw in enumerate(lines, start=1):
        if line_no == 1:
            raw = raw.removeprefix(UTF8_BOM)
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            yield line_no, None, (f"not UTF-8 text (byte 0x{raw[exc.start]:02x} at column {exc.start + 1}); save "
                                  "the file as UTF-8")
            continue
        if not line.strip():
            yield line_no, None, BLANK
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            yield line_no, None, f"malformed JSON ({exc.msg} at column {exc.colno})"
            continue
        if not isinstance(record, dict):
            yield line_no, None, f"the line is a JSON {json_type(record)}, not an object"
            continue
        yield line_no, record, None


def json_type(value: Any) -> str:
    """The JSON name of a parsed value's type: object, array, string, number, boolean, null."""
    if isinstance(value, bool):
        return "boolean"
    return {dict: "object", list: "array", str: "string", int: "number", float: "number"}.get(type(value), "null")


def swap_directory(new: Path, final: Path) -> None:
    """Put the finished directory `new` where `final` is, with two renames (a directory cannot be renamed over a
    non-empty one): a crash between them leaves `final.old`, which `recover_directory` puts back."""
    old = final.with_name(final.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(new, final)
    shutil.rmtree(old, ignore_errors=True)


def recover_directory(final: Path, marker: str) -> None:
    """After a crash inside `swap_directory`: put `final.old` back when `final` has no `marker` file and it has."""
    old = final.with_name(final.name + ".old")
    if not (final / marker).exists() and (old / marker).exists():
        shutil.rmtree(final, ignore_errors=True)
        os.replace(old, final)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temp file in the same directory and an atomic rename."""
    with _replaced(path, "file") as tmp, tmp.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def read_parquet(path: Path, columns: list[str] | None = None) -> pl.DataFrame:
    """Read a Parquet file, checking each data page against its CRC where the writer stored one (every file of
    `atomic_write_parquet`): a flipped byte in a page decodes into wrong values without a word otherwise.

    Raises:
        OSError, pyarrow.ArrowException: unreadable, or a page whose checksum does not match.
    """
    import polars as pl
    import pyarrow.parquet as pq

    return pl.from_arrow(pq.read_table(path, columns=columns, page_checksum_verification=True))


def atomic_write_parquet(frame: pl.DataFrame, path: Path, metadata: dict[str, str] | None = None,
                         row_group_size: int | None = None, byte_stream_split: tuple[str, ...] = ()) -> None:
    """Write a polars frame as one Parquet file, atomically, with optional key-value metadata.

    Args:
        row_group_size: rows per row group (the unit a reader can fetch alone); None: pyarrow's default.
        byte_stream_split: float columns (or lists of floats) to write byte-stream-split, which zstd compresses
            better: their exponent bytes, stored together, repeat.
    """
    import pyarrow.parquet as pq

    arrow = frame.to_arrow()
    if metadata:
        arrow = arrow.replace_schema_metadata({**(arrow.schema.metadata or {}), **metadata})
    split = [f"{name}.list.element" if _is_list(arrow.schema.field(name).type) else name for name in byte_stream_split]
    with _replaced(path, "Parquet file") as tmp:
        pq.write_table(arrow, tmp, compression="zstd", write_page_checksum=True,  # see read_parquet
                       row_group_size=row_group_size, use_byte_stream_split=split or False)


def _is_list(data_type: Any) -> bool:
    import pyarrow as pa

    return pa.types.is_list(data_type) or pa.types.is_large_list(data_type)
