"""What a run leaves on disk: the run directory and its checkpoints, and image and plot files."""
