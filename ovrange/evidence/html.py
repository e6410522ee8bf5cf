"""One self-contained HTML file from a campaign: what was run, the results, the vulnerability map, safety figures.

Inline CSS and SVG only: nothing is fetched when the file is viewed. Every number shown is also in a
machine-readable ``<script type="application/json" id="ovrange-data">`` block, so a reader (or a test) can check
the page against ``result.json``. Rendering only: the numbers come from :mod:`ovrange.evidence.safety`,
:mod:`ovrange.evidence.vulnerability` and the campaign result.
"""

from __future__ import annotations

import json
from html import escape
from typing import Any

from ovrange.evidence.safety import MBIT, from_result
from ovrange.evidence.svg import rate_chart
from ovrange.evidence.vulnerability import MIN_TRIALS, plot, vulnerability

CHART_ROWS = 64  # per-bit (32 or fewer) and per-site views of small models are charted
TABLE_SITES = 100  # rows of each model's vulnerability table (the page stays small for models of many sites)

CSS = """body{font-family:system-ui,sans-serif;max-width:1000px;margin:1em auto;padding:0 1em;color:#222;
font-size:14px;line-height:1.4}h1{font-size:22px}h2{font-size:18px;border-bottom:1px solid #ccc;margin-top:1.6em}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:2px 6px;text-align:left;
vertical-align:top}th{background:#f0f0f0}td.n{text-align:right;font-variant-numeric:tabular-nums}
code{background:#f4f4f4;padding:0 3px;word-break:break-all}.few{color:#888;font-style:italic}.pass{color:#1a7f37;
font-weight:bold}.fail{color:#c0392b;font-weight:bold}.note{color:#555;font-size:13px}svg{max-width:100%;
height:auto}details{margin:.5em 0}"""


def pct(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}%}"


def with_interval(entry: dict[str, Any] | None, fmt=pct) -> str:
    """``1.10% [0.73%, 1.66%]`` (and ``(22/2000)`` for a proportion)."""
    if entry is None or entry.get("value") is None:
        return "–"
    text = f"{fmt(entry['value'])} [{fmt(entry['low'])}, {fmt(entry['high']) if entry['high'] is not None else '∞'}]"
    return text + (f" ({entry['k']}/{entry['n']})" if "k" in entry else "")


def fit(value: float | None) -> str:
    return "–" if value is None else f"{value:.3g}"


def times(value: float | None) -> str:
    return "∞" if value is None else f"{value:.2f}×"


def table(header: list[str], rows: list[list[str]], numeric_from: int = 1) -> str:
    """An HTML table; cells are already-escaped HTML."""
    head = f"<tr>{''.join(f'<th>{h}</th>' for h in header)}</tr>" if any(header) else ""
    body = "".join("<tr>" + "".join(f'<td class="n">{c}</td>' if i >= numeric_from else f"<td>{c}</td>"
                                    for i, c in enumerate(row)) + "</tr>" for row in rows)
    return f"<table>{head}{body}</table>"


def _rate_cell(rate: dict[str, Any]) -> str:
    return escape(with_interval({"value": rate["rate"], **rate}))


def _run_section(data: dict[str, Any], spec: dict[str, Any]) -> str:
    prov = data["provenance"]
    rows = [["command line", f"<code>{escape(prov.get('command', 'not recorded'))}</code>"],
            ["working folder", f"<code>{escape(prov.get('cwd', 'not recorded'))}</code>"],
            ["versions", escape(", ".join(f"{k} {v}" for k, v in prov.get("versions", {}).items()) or
                                "not recorded")]]
    for i, model in enumerate(prov.get("models") or [{"name": n} for n in data["model_names"]]):
        digests = ", ".join(f"{k} <code>{escape(str(model[k]))}</code>" for k in ("graph_digest", "sha256",
                                                                                  "bin_sha256") if k in model)
        rows.append([f"model {i}", f"<code>{escape(model['name'])}</code><br>{digests or 'no digest recorded'}"])
    source = prov.get("data", {"source": data["data"]})
    digest = source.get("sha256") or source.get("sha256_tree")
    rows.append(["data", f"<code>{escape(str(source.get('source')))}</code>" +
                 (f"<br>sha256 <code>{digest}</code>" if digest else "")])
    rows += [["fault list fingerprint", f"<code>{escape(data['fingerprint'])}</code>"],
             ["seed", str(spec["seed"])],
             ["fault model", escape(_fault_model(spec))],
             ["sites", f"{data['sites']} {escape(spec['target'])} sites, drawn by {escape(spec['weighting'])}; "
                       f"{data['faulted_bits']:,} faulted bits per inference"],
             ["SDC criterion", f"{escape(str(spec['sdc']))}; DUE: NaN/Inf in the output"],
             ["inputs", f"{data['inputs']} distinct inputs from <code>{escape(data['data'] or 'data')}</code>"],
             ["trials", f"{data['summary']['trials']} (complete: {'yes' if data['summary']['complete'] else 'no'})"]]
    stop = data["stopping"]
    if stop:  # statistical stopping: the trials not run were never needed
        rows.append(["stopped", escape(f"after {stop['trials']} of {data['summary']['trials']} trials "
                                       f"({len(stop['rounds'])} rounds): {stop['reason']} ({stop['method']})")])
    return "<h2>What was run</h2>" + table(["", ""], rows, numeric_from=9)


def _fault_model(spec: dict[str, Any]) -> str:
    if spec.get("ber"):
        return f"bit-error rate {spec['ber']:g} per bit in {spec['number_format']} values"
    if spec.get("error_rate"):
        return f"error rate {spec['error_rate']:g} per value, {spec['fault_model']} each"
    bits = spec["bits"]
    span = f"{bits[0]}-{bits[-1]}" if bits == list(range(bits[0], bits[-1] + 1)) else ",".join(map(str, bits))
    return f"one {spec['fault_model']} fault per inference in {spec['number_format']} values, bits {span}"


def _headline(data: dict[str, Any]) -> str:
    summary, rows = data["summary"], []
    for name in data["model_names"]:
        entry = summary["models"][name]
        n = entry["sdc"]["n"]
        rows.append([f"<code>{escape(name)}</code>", str(n), f"{entry['masked']['k']} ({pct(entry['masked']['rate'])})",
                     _rate_cell(entry["sdc"]), _rate_cell(entry["due"])])
    out = "<h2>Headline</h2>" + table(["model", "trials", "masked", "SDC (95% CI)", "DUE (95% CI)"], rows)
    for comparison, figures in zip(summary.get("comparisons", []), data["safety"]["comparisons"]):
        red = comparison["sdc_reduction"]
        paired = figures["sdc_reduction"]
        out += (f"<p>SDC reduction from <code>{escape(comparison['models'][0])}</code> to "
                f"<code>{escape(comparison['models'][1])}</code>: <b>{escape(with_interval(paired, times))}</b> "
                f"(paired log interval over the same {comparison['trials']} faults; at least "
                f"{times(red['at_least']) if red['at_least'] is not None else '–'} from the two separate Wilson "
                f"intervals).</p>")
        both = comparison.get("sdc_due_reduction")
        if both is not None:  # results written before SDC+DUE was recorded lack it
            out += (f"<p>SDC+DUE reduction: <b>{times(both['ratio'])}</b> "
                    f"(at least {times(both['at_least']) if both['at_least'] is not None else '–'}). SDC including "
                    f"DUEs turned silent: <b>{comparison['due_turned_silent']}</b> of "
                    f"{sum(comparison['paired']['due'].values())} DUEs of model 0 became SDCs (DUE → SDC).</p>")
        table_ = comparison["paired"]
        changes = [f"{a.upper() if a != 'masked' else a} → {b.upper() if b != 'masked' else b} {row[b]}"
                   for a, row in table_.items() for b in ("masked", "sdc", "due") if a != b and row[b]]
        out += (f"<p>Trial by trial: rows = outcome under model 0, columns = under "
                f"<code>{escape(comparison['models'][1])}</code>.</p>" +
                table(["", "masked", "SDC", "DUE"], [[a] + [str(row[b]) for b in ("masked", "sdc", "due")]
                                                     for a, row in table_.items()])
                + f"<p>Changed outcomes: {escape(', '.join(changes) or 'none')}.</p>")
    return out


SAFETY_TEXT = """<p>Formulas (ISO 26262-5 names). λ: raw rate of faults in the faulted bits (FIT = failures per
10<sup>9</sup> h), <i>given</i>, not measured: <code>λ = FIT<sub>raw</sub>/Mbit × bits / 2<sup>20</sup></code>
or the per-device FIT; it must be the rate at which upsets strike these bits while they are in use (activations
live only during an inference: scale a memory's per-Mbit rate by the time they are resident, or give the rate per
device). Estimated by the campaign: P(SDC | fault) and P(DUE | fault), with Wilson 95% intervals.
<code>λ<sub>SPF</sub> + λ<sub>RF</sub> = λ × P(SDC | fault)</code> (silent violations: single-point and residual
faults together; the campaign cannot tell which struck element a safety mechanism was meant to cover);
<code>λ<sub>DUE</sub> = λ × P(DUE | fault)</code> (detected faults, counted toward the multiple-point detected
faults); <code>SPFM = 1 − (λ<sub>SPF</sub> + λ<sub>RF</sub>)/λ = 1 − P(SDC | fault)</code>;
<code>DC = detected / (detected + silent) = DUE / (DUE + SDC)</code>. SDC reduction p<sub>0</sub>/p<sub>1</sub> on
the same faults: <code>(a + b)/(a + c)</code>, a: SDC in both, b: in model 0 only, c: in model 1 only, 95%
interval <code>exp(ln R ± 1.96 √((b + c)/((a + b)(a + c))))</code> (0.5 added to a, b, c when a margin is 0).
"Corrected": the share of model 0's SDC faults that are not SDC in model 1 (Wilson).</p>
<p>Not estimated: λ itself; the latent-fault metric (LFM) and PMHF (they need multiple-point and latent fault
rates of the whole system); faults inside fused kernels, control logic, caches, input buffers or the host;
multi-bit upsets; inputs unlike the campaign's.</p>"""


def _safety(data: dict[str, Any]) -> str:
    safety = data["safety"]
    out = "<h2>Safety figures</h2><ul>" + "".join(f"<li>{escape(a)}</li>" for a in safety["assumptions"]) + "</ul>"
    if safety["unsuitable"]:
        out += f'<p class="fail">Rates per upset do not apply: {escape(safety["unsuitable"])}.</p>'
    if safety["lambda_fit"] is not None:
        unit = "Mbit" if safety["fit_unit"] == "mbit" else "device"
        out += (f"<p>Raw rate: {safety['fit_raw']:g} FIT per {unit}"
                + (f" × {safety['faulted_bits']:,} bits / {MBIT:,} " if unit == "Mbit" else " ")
                + f"= λ = <b>{fit(safety['lambda_fit'])} FIT</b>.</p>")
    else:
        out += "<p>No raw fault rate given (<code>--fit-raw</code>): FIT rates are not shown.</p>"
    models = safety["models"]
    per = "per trial" if safety["unsuitable"] else "| fault"
    rows = [[f"P(SDC {per})"] + [escape(with_interval(m["p_sdc"])) for m in models],
            ["λ<sub>SPF</sub> + λ<sub>RF</sub> (SDC), FIT"] + [escape(with_interval(m["lambda_sdc_fit"], fit))
                                                             for m in models],
            [f"P(DUE {per})"] + [escape(with_interval(m["p_due"])) for m in models],
            ["λ<sub>DUE</sub> (detected), FIT"] + [escape(with_interval(m["lambda_due_fit"], fit)) for m in models],
            ["SPFM"] + [escape(with_interval(m["spfm"], lambda v: pct(v, 3))) if m["spfm"] else "–"
                        for m in models],
            ["DC = detected/(detected+silent)"] + [escape(with_interval(m["dc"])) for m in models]]
    if any(m.get("flagged") for m in models):  # a model with its own detector (a Checksum flag)
        rows.append(["flagged by the model's detector"] + [escape(with_interval(m["flagged"])) if m.get("flagged")
                                                           else "–" for m in models])
    out += table(["figure"] + [f"<code>{escape(m['name'])}</code>" for m in models], rows)
    for comparison in safety["comparisons"]:
        out += (f"<p>Paired SDC counts: a = {comparison['sdc_both']}, b = {comparison['sdc_first_only']}, "
                f"c = {comparison['sdc_second_only']}; SDC reduction "
                f"<b>{escape(with_interval(comparison['sdc_reduction'], times))}</b>; corrected "
                f"{escape(with_interval(comparison['corrected']))}"
                + (f"; failures of the first model (SDC or DUE) the second one detects "
                   f"{escape(with_interval(comparison['failures_detected']))}" if "failures_detected" in comparison
                   else "") + ".</p>")
    return out + SAFETY_TEXT


def _vulnerability(data: dict[str, Any]) -> str:
    vmap = data["vulnerability"]
    out = (f"<h2>Vulnerability map</h2><p class='note'>A site's share of a model's SDC: its SDC trials over all "
           f"SDC trials ({escape(vmap['share_interval'])}). Sites with fewer than {vmap['min_trials']} trials "
           f"are marked, not drawn.</p>" + plot(vmap))
    for model in vmap["models"]:
        rows = []
        for e in model["sites"][:TABLE_SITES]:
            few = ' <span class="few">few trials</span>' if e["few_trials"] else ""
            rows.append([str(e["rank"]), f"<code>{escape(e['name'])}</code>{few}",
                         f"{escape(e['op'])}, {escape(e['role'])}, {escape(e['format'])}", f"{e['bits']:,}",
                         str(e["trials"]), escape(with_interval(e["sdc"])), escape(with_interval(e["sdc_share"])),
                         escape(with_interval(e["due"]))])
        out += (f"<details{' open' if model is vmap['models'][0] else ''}><summary>{escape(model['name'])}: "
                f"{model['sdc']} SDC, {model['due']} DUE in {model['trials']} trials</summary>"
                + table(["rank", "site", "op, role, format", "bits", "trials", "SDC rate", "share of SDC",
                         "DUE rate"], rows, numeric_from=3) + _more(len(model["sites"])) + "</details>")
    return out


def _more(sites: int) -> str:
    if sites <= TABLE_SITES:
        return ""
    return (f"<p class='note'>The top {TABLE_SITES} of {sites} sites; all of them are in vulnerability.json and in "
            "this page's ovrange-data block.</p>")


def _breakdown(data: dict[str, Any], key: str, title: str) -> str:
    names = data["model_names"]
    tables = [data["summary"]["models"][n].get(key, {}) for n in names]
    if not tables[0]:
        return ""
    keys = list(tables[0])
    rows = [[escape(k)] + [_rate_cell(t[k]) for t in tables] for k in keys]
    html_table = table([title] + [f"<code>{escape(n)}</code>" for n in names], rows)
    if len(keys) > CHART_ROWS:  # a chart of hundreds of sites reads as noise: the table holds them
        return (f"<h2>SDC per {title}</h2><p class='note'>{len(keys)} rows: table only (the vulnerability map "
                f"charts the top sites).</p>" + html_table)
    chart_rows = [{"label": f"bit {k}" if key == "per_bit" else k,
                   "series": [{"value": t[k]["rate"], **t[k]} for t in tables]} for k in keys]
    chart = rate_chart(f"SDC rate per {title}", chart_rows, names, min_trials=MIN_TRIALS,
                       axis_label="P(SDC | fault), log scale, 95% Wilson interval")
    return f"<h2>SDC per {title}</h2>{chart}<details><summary>table</summary>{html_table}</details>"


def _check(check: dict[str, Any] | None) -> str:
    if check is None:
        return ""
    verdict = '<span class="pass">PASS</span>' if check.get("passed") else '<span class="fail">FAIL</span>'
    rows = [[escape(str(g.get("name"))), escape(str(g.get("measured"))), escape(str(g.get("limit"))),
             '<span class="pass">pass</span>' if g.get("passed") else '<span class="fail">fail</span>',
             escape(str(g.get("message")))] for g in check.get("gates", [])]
    return (f"<h2>Check gates: {verdict}</h2>" + table(["gate", "measured", "limit", "result", "message"], rows)
            + f"<p class='note'>original <code>{escape(str(check.get('original')))}</code>, protected "
              f"<code>{escape(str(check.get('protected')))}</code></p>")


def report_data(result, fit_raw: float | None = None, unit: str = "mbit",
                check: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything the page shows, as JSON-ready data."""
    return {"schema": "ovrange-evidence/1", "model_names": [m.name for m in result.models],
            "spec": result.spec.to_dict(), "data": result.data, "fingerprint": result.fingerprint,
            "sites": len(result.sites), "faulted_bits": sum(s.size for s in result.sites) * len(result.spec.bits),
            "inputs": len(set(result.trial_input.tolist())), "stopping": result.meta.get("stopping"),
            "provenance": result.meta.get("provenance", {}), "summary": result.summary(),
            "vulnerability": vulnerability(result), "safety": from_result(result, fit_raw, unit), "check": check}


def render(data: dict[str, Any]) -> str:
    """The page; ``data`` from :func:`report_data`."""
    spec = data["spec"]
    title = f"ovrange fault-injection evidence: {spec['target']}, {data['summary']['trials']} trials"
    payload = json.dumps(data, allow_nan=False, separators=(",", ":")).replace("</", "<\\/")
    body = [f"<h1>{escape(title)}</h1>", _run_section(data, spec), _headline(data), _safety(data)]
    if data["vulnerability"]["multi_fault_trials"] < data["summary"]["trials"]:  # per-site outcomes exist
        body.append(_vulnerability(data))
    body += [_breakdown(data, "per_bit", "bit position"), _breakdown(data, "per_layer", "site"), _check(data["check"])]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{escape(title)}</title><style>{CSS}</style></head><body>\n" + "\n".join(body) +
            f'\n<script type="application/json" id="ovrange-data">{payload}</script>\n</body></html>\n')
