"""Turning an experiment into tables (results.py)."""
