"""Test suite: unit, integration (run.py as a subprocess) and model tests."""
