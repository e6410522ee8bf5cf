"""ovrange: protect OpenVINO models against hardware faults, and prove it with fault injection.

Public API (NNCF-shaped: OpenVINO objects in, OpenVINO objects out)::

    import ovrange
    protected = ovrange.protect(model, ovrange.Dataset(samples), subset_size=300)
    result = ovrange.inject(model, test_data, compare=protected, target="activations", trials=2000, seed=0)
"""

from __future__ import annotations

__version__ = "0.1.0"

from ovrange.data import Dataset  # noqa: E402
from ovrange.errors import OvrangeError  # noqa: E402
from ovrange.protect import protect, protection_info, save_protected  # noqa: E402
from ovrange.stats import collect_statistics  # noqa: E402
from ovrange.bounds import derive_bounds  # noqa: E402
from ovrange.faults import CampaignResult, inject  # noqa: E402

__all__ = ["Dataset", "OvrangeError", "protect", "protection_info", "save_protected", "collect_statistics",
           "derive_bounds", "inject", "CampaignResult", "__version__"]
