"""The pandas catalog of a Med3D store: schema, parquet io, queries, splits."""
