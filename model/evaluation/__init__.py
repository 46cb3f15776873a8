"""Evaluation: metrics (Dice, the LiTS surface set, classification), whole-volume inference, evaluate, predict,
compare."""
