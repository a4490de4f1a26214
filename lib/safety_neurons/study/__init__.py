"""What two or more stages share, and what knows the run directory: stage folders, M1/M2 identity,
prompt selection, rankings, the patching-arm store, plots, figures and the environment check."""
