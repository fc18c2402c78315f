"""Training: the loop (`loop`), and the helpers it calls (EMA, optimiser, precision, run state)."""
