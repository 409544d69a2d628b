"""Batch scripts over methods x data sets x seeds: the paper's experiments and the benchmark."""
