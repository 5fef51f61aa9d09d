"""Benchmarks: ``python3 scripts/dev.py bench`` runs ``benchmarks/run.py``.

Never timed assertions: these measure and report, the test suite asserts behaviour only.
"""
