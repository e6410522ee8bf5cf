"""Shared fixtures. The repo root is on sys.path (pytest ``pythonpath``) so tests import ``tests.models`` and
``scripts.*`` builders."""
