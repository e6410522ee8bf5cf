"""Evidence from a campaign for a safety case: the vulnerability map, safety figures, a self-contained HTML report.

    from ovrange.evidence import vulnerability, safety_figures
    result = CampaignResult.load("report/result.json")
    vulnerability(result)["models"][0]["sites"][0]      # the site with the largest share of SDC
    safety_figures(result, fit_raw=1000.0)              # FIT per Mbit of the faulted bits
"""

from ovrange.evidence.safety import from_result as safety_figures
from ovrange.evidence.vulnerability import vulnerability, write_vulnerability

__all__ = ["safety_figures", "vulnerability", "write_vulnerability"]
