"""The cold tier: final minute rollups in Parquet, one directory per day, queried with DuckDB."""
