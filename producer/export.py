"""Export jobs with their scores and provenance to CSV or Parquet, streamed in pages (constant memory).

Parquet needs pyarrow (`pip install 'videoscore-queue[export]'`); CSV needs nothing. Columns are every field
of a job record; in CSV, tags and frame indices are JSON text, in Parquet a map and a list of integers.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from dataclasses import fields
from datetime import datetime
from pathlib import Path
from typing import Any

from videoscore.db.records import JobRecord

COLUMNS = [f.name for f in fields(JobRecord)]
PARQUET_ROWS_PER_GROUP = 50_000


def export_jobs(records: Iterable[JobRecord], out: Path, *, fmt: str) -> int:
    """Write `records` to `out` as `fmt` ("csv" or "parquet"); returns how many rows were written."""
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "csv":
        return _write_csv(records, out)
    if fmt == "parquet":
        return _write_parquet(records, out)
    raise ValueError(f"unknown export format {fmt!r}: csv or parquet")


def _write_csv(records: Iterable[JobRecord], out: Path) -> int:
    count = 0
    with out.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        for record in records:
            writer.writerow([_csv_cell(getattr(record, c)) for c in COLUMNS])
            count += 1
    return count


def _csv_cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def _write_parquet(records: Iterable[JobRecord], out: Path) -> int:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise RuntimeError("Parquet export needs pyarrow: pip install 'videoscore-queue[export]'") from None

    schema = pa.schema([(name, _arrow_type(pa, name)) for name in COLUMNS])
    count = 0
    with pq.ParquetWriter(out, schema, compression="zstd") as writer:
        rows: list[JobRecord] = []
        for record in records:
            rows.append(record)
            if len(rows) >= PARQUET_ROWS_PER_GROUP:
                count += _write_group(pa, writer, schema, rows)
                rows = []
        if rows or count == 0:
            count += _write_group(pa, writer, schema, rows)
    return count


def _write_group(pa: Any, writer: Any, schema: Any, rows: list[JobRecord]) -> int:
    columns = {}
    for name in COLUMNS:
        values = [getattr(r, name) for r in rows]
        if name == "tags":
            values = [list((v or {}).items()) for v in values]
        columns[name] = pa.array(values, type=schema.field(name).type)
    writer.write_table(pa.table(columns, schema=schema))
    return len(rows)


def _arrow_type(pa: Any, name: str) -> Any:
    kind = {f.name: f.type for f in fields(JobRecord)}[name]
    text = str(kind)
    if name == "tags":
        return pa.map_(pa.string(), pa.string())
    if name == "frame_indices":
        return pa.list_(pa.int32())
    if "datetime" in text:
        return pa.timestamp("us", tz="UTC")
    if "float" in text:
        return pa.float64()
    if "bool" in text:
        return pa.bool_()
    if "int" in text:
        return pa.int64()
    return pa.string()
