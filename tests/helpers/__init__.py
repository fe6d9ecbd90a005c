"""Helpers shared by test modules (fixtures are in tests/conftest.py)."""
