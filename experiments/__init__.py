"""Experiments built on the training stages: the embedded demo (`demo.py`) and its plots
(`plots.py`)."""
