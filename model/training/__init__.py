"""Training: frozen run configs, atomic checkpoints, the step loop, and the recipes (pretrain, finetune)."""
