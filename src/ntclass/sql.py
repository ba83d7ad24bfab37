"""DuckDB, bounded: the connections and queries every out-of-core step shares."""

from __future__ import annotations

import os
from pathlib import Path

import duckdb


def quoted(name: str) -> str:
    """A column name as a DuckDB identifier."""
    return '"' + name.replace('"', '""') + '"'


# DuckDB's pool in every job: past it DuckDB spills to disk, so that no job's memory grows
# with the target (at 10^7 synapses a job peaks at this plus about 250 MB of its own)
POOL = "512MB"


def duckdb_connection(temp_dir: Path, memory_limit: str = POOL) -> duckdb.DuckDBPyConnection:
    """DuckDB bounded in memory, spilling to `temp_dir`, on the job's cores."""
    con = duckdb.connect()
    threads = max(1, len(os.sched_getaffinity(0)))
    con.execute(f"SET memory_limit = '{memory_limit}'; SET threads = {threads}; "
                f"SET temp_directory = '{temp_dir}'; SET preserve_insertion_order = true")
    return con


def query_one(con: duckdb.DuckDBPyConnection, query: str) -> tuple | None:
    """The first row of a query's result (None when it has none), the result consumed."""
    rows = con.execute(query).fetchall()
    return rows[0] if rows else None
