"""Evidence from a real campaign on the bundled LeNet: vulnerability map, HTML report read back, headless Chromium.

One session-scoped campaign (original vs RangeSupervision, 400 activation faults) through the real command line.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import struct
import subprocess
import sys
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TRIALS = 400
MAX_BYTES = 2 * 1024 * 1024


def ovrange(*args, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "ovrange", *map(str, args)], capture_output=True, text=True,
                          timeout=600, cwd=ROOT)
    if check:
        assert done.returncode == 0, done.stderr
    return done


@pytest.fixture(scope="session")
def campaign(bundled, tmp_path_factory) -> dict[str, Path]:
    """The report folder of a campaign, its HTML report (1000 FIT/Mbit) and the check report shown in it."""
    root = tmp_path_factory.mktemp("evidence")
    lenet = bundled["lenet"]
    ovrange("protect", "--config", ROOT / "configs" / "fashion_lenet.json", "-o", root / "prot")
    protected = root / "prot" / "fashion_lenet_RangeSupervision" / "fashion_lenet.xml"
    ovrange("inject", lenet["xml"], "--compare", protected, "--data", lenet["test_npz"], "--target", "activations",
            "--trials", TRIALS, "--seed", 0, "--report", root / "campaign", "-q", "--no-plots")
    ovrange("check", lenet["xml"], protected, "--data", lenet["test_npz"], "--max-accuracy-drop", 5, "--num-samples",
            200, "--json", root / "check.json", "-q")
    ovrange("report", root / "campaign", "--html", root / "report.html", "--fit-raw", 1000,
            "--check", root / "check.json")
    return {"dir": root / "campaign", "html": root / "report.html", "xml": Path(lenet["xml"]),
            "protected": protected, "root": root}


def recount(result: dict) -> list[dict[str, Counter]]:
    """Per model, per site index: Counter of outcome characters, straight from result.json's per-trial lists."""
    sites = result["trials"]["site"]
    return [{i: Counter(o for s, o in zip(sites, m["outcomes"]) if s == i and o != "-")
             for i in range(len(result["sites"]))} for m in result["models"]]


def test_vulnerability_map_equals_counts_from_result_json(campaign):
    result = json.loads((campaign["dir"] / "result.json").read_text())
    vmap = json.loads((campaign["dir"] / "vulnerability.json").read_text())
    svg = (campaign["dir"] / "vulnerability.svg").read_text()
    assert svg.startswith("<svg")
    counts = recount(result)
    names = [s["name"] for s in result["sites"]]
    for model, per_site in zip(vmap["models"], counts):
        total_sdc = sum(c["s"] for c in per_site.values())
        assert model["sdc"] == total_sdc and model["trials"] == TRIALS
        assert [e["rank"] for e in model["sites"]] == list(range(1, len(names) + 1))
        shares = [e["sdc_share"]["value"] or 0.0 for e in model["sites"]]
        assert shares == sorted(shares, reverse=True)
        for entry in model["sites"]:
            c = per_site[names.index(entry["name"])]
            assert entry["trials"] == sum(c.values())
            assert (entry["sdc"]["k"], entry["due"]["k"]) == (c["s"], c["d"])
            assert entry["sdc_share"]["value"] == (c["s"] / total_sdc if total_sdc else None)
            assert entry["few_trials"] == (entry["trials"] < vmap["min_trials"])
            site = result["sites"][names.index(entry["name"])]
            elements = 1
            for d in site["shape"]:
                elements *= d
            assert entry["bits"] == elements * len(result["spec"]["bits"]) and entry["op"] == site["op"]
    few = [e for e in vmap["models"][0]["sites"] if e["few_trials"]]
    assert few  # 400 trials leave the small classifier layers below MIN_TRIALS: marked, not drawn as bars
    for entry in few:
        assert f"too few trials ({entry['sdc']['k']}/{entry['sdc']['n']}): not drawn" in svg


class _Text(HTMLParser):
    """The page's visible text, its ovrange-data block, and every src/href."""

    def __init__(self):
        super().__init__()
        self.text, self.data, self.links, self._in = [], "", [], None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.links += [v for k, v in attrs.items() if k in ("src", "href") and v]
        self._in = "data" if tag == "script" and attrs.get("id") == "ovrange-data" else tag

    def handle_endtag(self, tag):
        self._in = None

    def handle_data(self, data):
        if self._in == "data":
            self.data += data
        elif self._in not in ("style", "script", "title"):
            self.text.append(data)


def parse(path: Path) -> _Text:
    page = _Text()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def test_html_numbers_read_back_equal_result_json(campaign):
    result = json.loads((campaign["dir"] / "result.json").read_text())
    page = parse(campaign["html"])
    data = json.loads(page.data)
    assert data["summary"] == result["summary"]  # the digest recomputed from the per-trial outcomes
    assert data["vulnerability"] == json.loads((campaign["dir"] / "vulnerability.json").read_text())
    text = " ".join(" ".join(page.text).split())
    for model, figures in zip(result["models"], data["safety"]["models"]):
        k, n = model["outcomes"].count("s"), len(model["outcomes"]) - model["outcomes"].count("-")
        assert (figures["p_sdc"]["k"], figures["p_sdc"]["n"]) == (k, n)
        assert f"({k}/{n})" in text
        assert figures["lambda_sdc_fit"]["value"] == pytest.approx(
            1000 * data["faulted_bits"] / 2 ** 20 * k / n)
    for name in data["model_names"]:  # the per-bit and per-site tables, cell by cell
        for key in ("per_bit", "per_layer"):
            for entry in result["summary"]["models"][name][key].values():
                assert f"({entry['k']}/{entry['n']})" in text
    paired = result["summary"]["comparison"]["paired"]
    first_only = paired["sdc"]["masked"] + paired["sdc"]["due"]
    assert f"b = {first_only}," in text and f"a = {paired['sdc']['sdc']}," in text
    for digest in (hashlib.sha256(campaign["xml"].read_bytes()).hexdigest(),
                   hashlib.sha256(campaign["protected"].read_bytes()).hexdigest()):
        assert digest in text  # what was run: the model files' digests
    assert "ovrange inject" in text and f"--trials {TRIALS}" in text
    assert "Check gates: PASS" in text and data["check"]["passed"] is True
    for name in ("SPFM", "DC = detected/(detected+silent)", "Vulnerability map", "SDC per bit position",
                 "SDC per site"):
        assert name in text


def test_html_is_self_contained_and_small(campaign):
    page = parse(campaign["html"])
    raw = campaign["html"].read_text(encoding="utf-8")
    assert not [link for link in page.links if not link.startswith(("#", "data:"))], page.links
    assert not re.search(r"<(link|img|iframe)\b|@import|url\(\s*['\"]?https?:", raw)
    assert campaign["html"].stat().st_size < MAX_BYTES
    assert len(json.loads(page.data)["summary"]["models"]) == 2


def _chromium(page: Path, out: Path, profile: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [shutil.which("chromium") or "chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", f"--screenshot={out}",
         "--window-size=1280,2000", page.as_uri()], capture_output=True, text=True, timeout=180)


def _png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", head[16:24])


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium (make test installs it)")
def test_html_opens_in_headless_chromium_without_console_messages(campaign, tmp_path):
    done = _chromium(campaign["html"], tmp_path / "shot.png", tmp_path / "profile")
    assert done.returncode == 0, done.stderr[-2000:]
    console = [line for line in done.stderr.splitlines() if ":CONSOLE" in line]
    assert not console, console
    assert _png_size(tmp_path / "shot.png") == (1280, 2000)
    assert (tmp_path / "shot.png").stat().st_size > 50_000  # a rendered page, not a blank one
    # the same check sees an error when there is one
    bad = tmp_path / "bad.html"
    bad.write_text("<!DOCTYPE html><p>x</p><script>undefinedFunction();</script>")
    seen = _chromium(bad, tmp_path / "bad.png", tmp_path / "profile2")
    assert any(":CONSOLE" in line and "undefinedFunction" in line for line in seen.stderr.splitlines())


def test_report_refuses_an_existing_html_and_bad_inputs(campaign, tmp_path):
    done = ovrange("report", campaign["dir"], "--html", campaign["html"], check=False)
    assert done.returncode == 5 and done.stderr.strip().splitlines() == [
        f"error: output already exists: {campaign['html']} (use --force to overwrite)"]
    before = campaign["html"].read_bytes()
    done = ovrange("report", tmp_path, "--html", tmp_path / "x.html", check=False)
    assert done.returncode == 4 and done.stderr.startswith("error: ") and len(done.stderr.splitlines()) == 1
    assert not (tmp_path / "x.html").exists()
    done = ovrange("report", campaign["dir"], "--fit-raw", 1, "--fit-unit", "gbit", check=False)
    assert done.returncode == 2 and "fit-unit" in done.stderr
    assert campaign["html"].read_bytes() == before


def test_a_new_campaign_removes_the_old_vulnerability_files(campaign, tmp_path):
    from ovrange.faults.report import remove_report

    old = tmp_path / "old"
    shutil.copytree(campaign["dir"], old)
    remove_report(old)
    assert not (old / "vulnerability.json").exists() and not (old / "vulnerability.svg").exists()
    assert (old / "faults.jsonl").exists()


def test_summary_and_html_show_sdc_due_beside_sdc_and_the_dues_turned_silent(campaign):
    result = json.loads((campaign["dir"] / "result.json").read_text())
    first, second = (m["outcomes"] for m in result["models"])
    silent = sum(a == "d" and b == "s" for a, b in zip(first, second))  # recounted from the per-trial outcomes
    dues = sum(a == "d" and b != "-" for a, b in zip(first, second))
    failed = [sum(o in "sd" for o in outcomes) for outcomes in (first, second)]
    comparison = result["summary"]["comparison"]
    assert comparison["due_turned_silent"] == silent
    assert comparison["sdc_due_reduction"]["ratio"] == (pytest.approx(failed[0] / failed[1]) if failed[1] else None)
    line = next(s for s in (campaign["dir"] / "summary.md").read_text().splitlines() if s.startswith("SDC reduction"))
    assert "SDC+DUE reduction: " in line
    both = "∞" if failed[1] == 0 else f"{failed[0] / failed[1]:.1f}×"
    assert f"SDC+DUE reduction: {both}" in line
    assert f"SDC including DUEs turned silent: {silent} of {dues} DUEs became SDCs" in line
    text = " ".join(" ".join(parse(campaign["html"]).text).split())
    assert f"DUEs turned silent: {silent} of {dues} DUEs" in text and "SDC+DUE reduction" in text
