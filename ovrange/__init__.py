"""ovrange: protect OpenVINO models against hardware faults, and prove it with fault injection.

Public API (NNCF-shaped: OpenVINO objects in, OpenVINO objects out)::

    import ovrange
    protected = ovrange.protect(model, ovrange.Dataset(samples), subset_size=300)
    result = ovrange.inject(model, test_data, compare=protected, target="activations", trials=2000, seed=0)
"""

from __future__ import annotations

from ovrange.version import __version__

from ovrange.errors import OvrangeError, ctrl_c_deferred_while_the_command_imports  # noqa: E402

with ctrl_c_deferred_while_the_command_imports():  # the heavy imports
    from ovrange.data import Dataset  # noqa: E402
    from ovrange.plan import ProtectionPlan, load_plan  # noqa: E402
    from ovrange.protect import apply_plan, protect, protection_info, save_protected  # noqa: E402
    from ovrange.stats import StatRequest, collect  # noqa: E402
    from ovrange.targets import Target, find_targets  # noqa: E402
    from ovrange.faults import CampaignResult, inject  # noqa: E402

__all__ = ["Dataset", "OvrangeError", "protect", "apply_plan", "protection_info", "save_protected",
           "ProtectionPlan", "load_plan", "Target", "find_targets", "StatRequest", "collect", "inject",
           "CampaignResult", "__version__"]
