"""Med3D preprocessing: raw public datasets -> zarr store + parquet catalog."""
