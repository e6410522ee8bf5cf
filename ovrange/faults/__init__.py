"""Fault injection: fault records and bit-flip models, injection models, the campaign runner, metrics, reports.

The modules follow the data: ``spec`` (settings) -> ``sites`` (where faults strike) -> ``faultlist`` (the seeded
plan: Fault, FaultArrays) -> ``engines`` (+ ``rate_engine``, over ``injectors``, ``linear``, ``stored``, number
``formats``) -> ``executors`` (local lanes; ``ray_executor``) -> ``outcomes`` (judged by :mod:`ovrange.compare`)
-> ``result`` / ``metrics`` / ``report``; ``campaign`` drives them (with ``stopping`` and ``sweep``).

    from ovrange.faults import inject
    result = inject("model.xml", "test.npz", compare="protected.xml", target="activations", trials=2000, seed=0)
    result.comparison()["sdc_reduction"]
"""

from ovrange.faults.campaign import inject, run_campaign
from ovrange.faults.faultlist import Fault, FaultList
from ovrange.faults.formats import FORMATS, NumberFormat, flip, parse_bits, parse_format
from ovrange.faults.metrics import Rate, wilson
from ovrange.faults.result import CampaignResult, ModelRun
from ovrange.faults.sites import Site, find_sites
from ovrange.faults.spec import CampaignSpec, SdcCriterion

__all__ = ["inject", "run_campaign", "CampaignResult", "ModelRun", "CampaignSpec", "SdcCriterion", "Fault",
           "FaultList", "NumberFormat", "FORMATS", "Rate", "Site", "find_sites", "flip", "parse_bits",
           "parse_format", "wilson"]
