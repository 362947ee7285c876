"""Ray Tune sweeps and the equal-budget method survey, built on pipelines."""
