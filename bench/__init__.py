"""Benchmarks of scheduler-host (`make bench`), reported as ratios to a same-run baseline."""
