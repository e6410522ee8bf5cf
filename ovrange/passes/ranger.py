"""Ranger (Chen, Li, Pattabiraman, DSN 2021): range restriction with every option of
:mod:`ovrange.passes.range_guards` (percentile bounds, per-channel bounds, propagation through pooling and data
movement, inherent bounds, tightened Clamps, zeroing correction)."""

from ovrange.passes.range_guards import PARAMS, apply, check_params, plan, propagate, requests, select  # noqa: F401
