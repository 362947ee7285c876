"""Ray Tune sweeps and the equal-budget survey (issue 6)."""
