"""A small profile of a dataset version: files and bytes, and for CSV/Parquet tables their
rows, columns, dtypes and simple per-column statistics (nulls; min, max, mean of numbers).

Tables are read in chunks (CSV) or record batches (Parquet), so profiling a file larger than
memory works. Parquet needs pyarrow; without it Parquet files are listed but not profiled,
and the profile says so. A table that cannot be parsed gets an ``error`` entry instead of
failing the registration: the data is what it is, the profile only describes it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, BinaryIO

MAX_TABLES = 20  # tables profiled per version (a folder of 10 000 CSV shards: the first 20)
CSV_CHUNK_ROWS = 100_000


def table_format(relpath: str) -> str | None:
    lower = relpath.lower()
    for suffix, fmt in ((".csv", "csv"), (".csv.gz", "csv"), (".tsv", "tsv"),
                        (".tsv.gz", "tsv"), (".parquet", "parquet"), (".pq", "parquet")):
        if lower.endswith(suffix):
            return fmt
    return None


def profile(files: list[tuple[str, int, Callable[[], BinaryIO]]]) -> dict[str, Any]:
    """``files``: (relpath, size, opener). Returns a JSON-able profile."""
    result: dict[str, Any] = {
        "files": len(files),
        "bytes": sum(size for _, size, _ in files),
        "tables": {},
    }
    formats: dict[str, int] = {}
    tabular = [(p, o) for p, _, o in files if table_format(p)]
    for relpath, _, _ in files:
        ext = relpath.rsplit(".", 1)[-1].lower() if "." in relpath.rsplit("/", 1)[-1] else ""
        formats[ext or "(none)"] = formats.get(ext or "(none)", 0) + 1
    result["extensions"] = dict(sorted(formats.items(), key=lambda kv: -kv[1])[:10])
    for relpath, opener in tabular[:MAX_TABLES]:
        fmt = table_format(relpath)
        try:
            if fmt == "parquet":
                result["tables"][relpath] = _parquet(opener)
            else:
                result["tables"][relpath] = _csv(relpath, opener, "\t" if fmt == "tsv" else ",")
        except Exception as exc:  # a malformed table: describe the problem, keep going
            message = str(exc).strip().splitlines()
            result["tables"][relpath] = {"format": fmt,
                                         "error": message[0] if message else type(exc).__name__}
    if len(tabular) > MAX_TABLES:
        result["note"] = f"profiled the first {MAX_TABLES} of {len(tabular)} tables"
    return result


class _Column:
    def __init__(self, dtype: str):
        self.dtype = dtype
        self.nulls = 0
        self.count = 0  # non-null numbers seen (for the mean)
        self.total = 0.0
        self.min: float | None = None
        self.max: float | None = None
        self.numeric = True

    def widen(self, dtype: str) -> None:
        if dtype == self.dtype:
            return
        numeric = {"int64", "float64", "Int64", "Float64", "int32", "float32", "bool"}
        self.dtype = "float64" if {dtype, self.dtype} <= numeric else "object"

    def add(self, nulls: int, count: int, total: float | None, lo: Any, hi: Any) -> None:
        self.nulls += int(nulls)
        if total is None:
            self.numeric = False
            return
        self.count += int(count)
        self.total += float(total)
        if lo is not None and not (isinstance(lo, float) and math.isnan(lo)):
            self.min = float(lo) if self.min is None else min(self.min, float(lo))
        if hi is not None and not (isinstance(hi, float) and math.isnan(hi)):
            self.max = float(hi) if self.max is None else max(self.max, float(hi))

    def as_dict(self, name: str) -> dict[str, Any]:
        out: dict[str, Any] = {"name": name, "dtype": self.dtype, "nulls": self.nulls}
        if self.numeric and self.count:
            out.update(min=_num(self.min), max=_num(self.max), mean=_num(self.total / self.count))
        return out


def _num(value: float | None) -> float | int | None:
    if value is None or not math.isfinite(value):
        return None
    return int(value) if value == int(value) and abs(value) < 2**53 else round(value, 6)


def _csv(relpath: str, opener: Callable[[], BinaryIO], sep: str) -> dict[str, Any]:
    import pandas as pd
    from pandas.api.types import is_bool_dtype, is_numeric_dtype

    columns: dict[str, _Column] = {}
    rows = 0
    compression = "gzip" if relpath.lower().endswith(".gz") else None
    with opener() as handle:
        reader = pd.read_csv(handle, sep=sep, chunksize=CSV_CHUNK_ROWS, compression=compression)
        for chunk in reader:
            rows += len(chunk)
            for name in chunk.columns:
                series = chunk[name]
                dtype = str(series.dtype)
                col = columns.get(str(name))
                if col is None:
                    col = columns[str(name)] = _Column(dtype)
                else:
                    col.widen(dtype)
                nulls = int(series.isna().sum())
                if is_numeric_dtype(series) and not is_bool_dtype(series):
                    valid = series.dropna()
                    col.add(nulls, len(valid), float(valid.sum()) if len(valid) else 0.0,
                            valid.min() if len(valid) else None,
                            valid.max() if len(valid) else None)
                else:
                    col.add(nulls, 0, None, None, None)
    return {"format": "csv" if sep == "," else "tsv", "rows": rows, "columns": len(columns),
            "schema": [c.as_dict(n) for n, c in columns.items()]}


def _parquet(opener: Callable[[], BinaryIO]) -> dict[str, Any]:
    try:
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq
    except ImportError:
        return {"format": "parquet",
                "note": "pyarrow is not installed: Parquet files are listed but not profiled"}
    with opener() as handle:
        parquet = pq.ParquetFile(handle)
        schema = parquet.schema_arrow
        columns = {f.name: _Column(_arrow_dtype(f.type)) for f in schema}
        numeric = {f.name for f in schema
                   if pa.types.is_integer(f.type) or pa.types.is_floating(f.type)}
        for batch in parquet.iter_batches(batch_size=65_536):
            for name in batch.schema.names:
                array = batch.column(name)
                nulls = array.null_count
                if name in numeric:
                    valid = len(array) - nulls
                    bounds = pc.min_max(array)
                    total = pc.sum(array).as_py() if valid else 0.0
                    columns[name].add(nulls, valid, float(total or 0.0),
                                      bounds["min"].as_py(), bounds["max"].as_py())
                else:
                    columns[name].add(nulls, 0, None, None, None)
        rows = parquet.metadata.num_rows
    return {"format": "parquet", "rows": rows, "columns": len(columns),
            "schema": [c.as_dict(n) for n, c in columns.items()]}


def _arrow_dtype(arrow_type: Any) -> str:
    # Name dtypes as pandas would, so CSV and Parquet profiles read the same.
    import numpy as np

    try:
        return np.dtype(arrow_type.to_pandas_dtype()).name
    except (NotImplementedError, AttributeError, TypeError):
        return str(arrow_type)
