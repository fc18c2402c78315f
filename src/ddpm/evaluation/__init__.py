"""Measuring samples: the Inception network, FID and KID, sampler sweeps and a run's FID history."""
