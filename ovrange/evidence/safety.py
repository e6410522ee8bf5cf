"""Safety figures from a campaign: residual FIT rates, SPFM, diagnostic coverage and the SDC reduction.

The fault model behind every figure: single-event upsets strike uniformly over the bits of the campaign's sites
(the faulted bits of one inference's activations, or of the stored weights), one fault per inference, at graph
level. A campaign estimates the *conditional* probabilities P(SDC | fault) and P(DUE | fault); a raw rate
``lambda`` (FIT, failures per 1e9 device-hours) supplied by the user turns them into rates. Every figure carries a
95% interval: Wilson's for a binomial proportion (scaled by ``lambda`` for FIT rates), a paired log interval for
the reduction. ISO 26262-5 names: lambda (raw), lambda_SPF + lambda_RF (faults that violate silently: SDC),
SPFM = 1 - (lambda_SPF + lambda_RF) / lambda, DC = detected / (detected + silent). Detected: a DUE, or a trial
whose model's own detector fired (a Checksum flag, ``ModelRun.flagged``); silent: an SDC it did not flag.
"""

from __future__ import annotations

import math
from typing import Any

from ovrange.errors import ConfigError
from ovrange.faults.metrics import Z95, wilson

MBIT = 2 ** 20  # bits per Mbit, as SRAM soft-error rates are quoted (FIT/Mbit)
FIT_UNITS = ("mbit", "device")

ASSUMPTIONS = (
    "single-event upsets strike uniformly over the faulted bits of the campaign's sites (elements weighting), "
    "one fault per inference",
    "graph level: faults in the outputs of graph operators (activations) or in stored weights; not inside fused "
    "kernels, control logic, caches or buffers the graph does not name",
    "the conditional probabilities hold for the campaign's inputs (drawn from its data, correctly classified when "
    "labelled) and its SDC criterion",
    "detected: a DUE (non-finite output; the system must check the outputs for NaN/Inf) or a trial in which the "
    "model's own detector (a Checksum flag) fired, whatever its correction then did",
)


def interval_dict(point: float | None, low: float | None, high: float | None) -> dict[str, float | None]:
    return {"value": point, "low": low, "high": high}


def proportion(k: int, n: int) -> dict[str, Any]:
    """k of n with its Wilson 95% interval (value None when n is 0)."""
    low, high = wilson(k, n)
    return {"k": k, "n": n, **interval_dict(k / n if n else None, low if n else None, high if n else None)}


def raw_rate(fit_raw: float, unit: str, bits: int) -> float:
    """lambda in FIT for the faulted storage: ``fit_raw`` per Mbit (2**20 bits) times its size, or per device."""
    if unit not in FIT_UNITS:
        raise ConfigError(f"--fit-unit must be one of {', '.join(FIT_UNITS)}, got {unit!r}")
    if not (math.isfinite(fit_raw) and fit_raw > 0):
        raise ConfigError(f"--fit-raw must be a finite number > 0, got {fit_raw}")
    return fit_raw * bits / MBIT if unit == "mbit" else fit_raw


def scaled(p: dict[str, Any], lam: float | None) -> dict[str, float | None] | None:
    """A conditional probability times lambda: a FIT rate with the proportion's interval scaled alike."""
    if lam is None or p["value"] is None:
        return None
    return interval_dict(lam * p["value"], lam * p["low"], lam * p["high"])


def spfm(sdc: dict[str, Any]) -> dict[str, float | None]:
    """SPFM = 1 - (lambda_SPF + lambda_RF) / lambda = 1 - P(SDC | fault); lambda cancels, so no raw rate needed."""
    if sdc["value"] is None:
        return interval_dict(None, None, None)
    return interval_dict(1 - sdc["value"], 1 - sdc["high"], 1 - sdc["low"])


def paired_ratio(both: int, first_only: int, second_only: int, z: float = Z95) -> dict[str, float | None]:
    """SDC reduction p1 / p2 over the same faults, with the paired (delta-method) log interval.

    ``both``: trials that are SDC in both models, ``first_only`` / ``second_only``: SDC in one model only.
    p1 / p2 = (both + first_only) / (both + second_only); var(log ratio) = (b + c) / ((a + b)(a + c)). When a
    margin is 0 the interval uses 0.5 added to each of a, b, c, and the point ratio is None (infinite or
    undefined).
    """
    a, b, c = both, first_only, second_only
    point = (a + b) / (a + c) if a + c else None
    if a + b == 0 and a + c == 0:
        return {"value": None, "low": None, "high": None}
    if a + b == 0 or a + c == 0:
        a, b, c = a + 0.5, b + 0.5, c + 0.5
    log_ratio = math.log((a + b) / (a + c))
    half = z * math.sqrt((b + c) / ((a + b) * (a + c)))
    high = math.exp(log_ratio + half) if point is not None else None  # no SDC left: no finite upper bound
    return {"value": point, "low": math.exp(log_ratio - half), "high": high}


def paired_counts(table: dict[str, dict[str, int]]) -> tuple[int, int, int]:
    """(SDC in both, SDC in the first only, SDC in the second only) from a paired outcome table."""
    both = table["sdc"]["sdc"]
    first = sum(v for k, v in table["sdc"].items() if k != "sdc")
    second = sum(row["sdc"] for k, row in table.items() if k != "sdc")
    return both, first, second


def suitability(spec: dict[str, Any], single_site: bool) -> str | None:
    """Why a campaign cannot give rates per raw fault (None when it can)."""
    if spec.get("ber") is not None or spec.get("error_rate") is not None or not single_site:
        return "the campaign injects several faults per inference (--ber / --error-rate): not one upset per inference"
    if spec.get("fault_model", "bit") != "bit":
        return f"the fault model is {spec['fault_model']}, not a single-bit upset"
    if spec.get("weighting") != "elements":
        return "sites were drawn uniformly, not in proportion to their bits (use --weighting elements)"
    return None


def model_figures(outcomes: dict[str, int], lam: float | None, flags: dict[str, int] | None = None
                  ) -> dict[str, Any]:
    """The figures of one model from its outcome counts (masked, sdc, due) and lambda (FIT, or None); ``flags``
    (a model with a detector): ``flagged`` trials, ``detected`` (DUE or flagged) and ``silent`` (SDC, not flagged)."""
    n = sum(outcomes.values())
    sdc, due = proportion(outcomes["sdc"], n), proportion(outcomes["due"], n)
    detected, silent = (flags["detected"], flags["silent"]) if flags else (outcomes["due"], outcomes["sdc"])
    return {"trials": n, "p_sdc": sdc, "p_due": due, "lambda_sdc_fit": scaled(sdc, lam),
            "lambda_due_fit": scaled(due, lam), "spfm": spfm(sdc), "dc": proportion(detected, detected + silent),
            "flagged": proportion(flags["flagged"], n) if flags else None}


def safety_figures(spec: dict[str, Any], bits: int, models: list[dict[str, Any]],
                   paired: list[dict[str, dict[str, int]]], fit_raw: float | None = None,
                   unit: str = "mbit", caught: dict[int, tuple[int, int]] | None = None) -> dict[str, Any]:
    """Every model's figures side by side, and each comparison with the first model.

    ``models``: ``{"name", "masked", "sdc", "due"}`` counts on the trials run (and ``flags`` for a model with a
    detector, :func:`model_figures`); ``paired``: the paired table of model 0 against model i (i >= 1), on the
    trials both ran; ``bits``: the faulted bits of one inference; ``caught``: for a model i with a detector, (of
    model 0's failures, how many model i detects; model 0's failures), on the same trials.
    """
    reason = suitability(spec, True)
    if reason and fit_raw is not None:
        raise ConfigError(f"no FIT rates from this campaign: {reason}")
    lam = raw_rate(fit_raw, unit, bits) if fit_raw is not None else None
    out: dict[str, Any] = {
        "assumptions": list(ASSUMPTIONS), "unsuitable": reason, "faulted_bits": bits,
        "fit_raw": fit_raw, "fit_unit": unit, "lambda_fit": lam,
        "models": [{"name": m["name"], **model_figures({k: m[k] for k in ("masked", "sdc", "due")}, lam,
                                                       m.get("flags"))} for m in models],
        "comparisons": [],
    }
    if reason:  # the campaign's rate is not the rate per upset: no SPFM either
        for model in out["models"]:
            model["spfm"] = None
    for i, table in enumerate(paired, start=1):
        a, b, c = paired_counts(table)
        out["comparisons"].append({
            "models": [models[0]["name"], models[i]["name"]], "sdc_both": a, "sdc_first_only": b,
            "sdc_second_only": c, "sdc_reduction": paired_ratio(a, b, c),
            "corrected": proportion(b, a + b),  # the first model's SDC faults the second one does not let through
        })
        if (caught or {}).get(i) is not None:  # the first model's failures (SDC or DUE) the second one detects
            out["comparisons"][-1]["failures_detected"] = proportion(*caught[i])
    return out


def from_result(result, fit_raw: float | None = None, unit: str = "mbit") -> dict[str, Any]:
    """:func:`safety_figures` of a :class:`ovrange.faults.result.CampaignResult`."""
    from ovrange.faults.metrics import DUE, MASKED, OUTCOMES, SDC

    spec = result.spec.to_dict()
    bits = sum(site.size for site in result.sites) * len(result.spec.bits)
    models, caught = [], {}
    for i, run in enumerate(result.models):
        done = run.outcome[run.done]
        models.append({"name": run.name, **{name: int((done == code).sum()) for code, name in enumerate(OUTCOMES)}})
        if run.flagged is not None:
            flagged = run.flagged[run.done]
            models[-1]["flags"] = {"flagged": int(flagged.sum()), "detected": int(((done == DUE) | flagged).sum()),
                                   "silent": int(((done == SDC) & ~flagged).sum())}
            first = result.models[0]
            both = first.done & run.done
            failing = both & (first.outcome != MASKED)
            if i:
                caught[i] = (int((failing & (run.flagged | (run.outcome == DUE))).sum()), int(failing.sum()))
    single = bool((result.trial_site >= 0).all())
    if not single and fit_raw is not None:
        raise ConfigError("no FIT rates from this campaign: it injects several faults per inference")
    figures = safety_figures(spec, bits, models, [result.comparison(0, i)["paired"] for i in
                                                  range(1, len(result.models))], fit_raw, unit, caught)
    if not single:
        figures["unsuitable"] = suitability(spec, False)
    return figures
