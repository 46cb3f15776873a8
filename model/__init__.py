"""Med3D training: zarr store -> encoder weights (pretrain, finetune, evaluate, export)."""
