"""Benchmarks of issue 13's figures, each a ratio to a floor measured in the same run.

``python -m bench`` runs them all (bench/run.py); each ``bench_*.py`` also runs alone.
"""
