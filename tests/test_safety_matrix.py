"""Hostile and careless inputs, run through the ``ovrange`` entry point in a fresh process on the bundled LeNet:
exactly one ``error:`` line, the documented exit code (2 usage/config, 3 model, 4 data, 5 output), no traceback, no
debris, and every file that was there before byte-identical (inputs, earlier results, unrelated files).

Each case's command line names its inputs; the check is on the whole workspace, so a write anywhere (a result
beside the input, a name used as a path, a temporary left behind) fails the case.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import ovrange
from tests.console import run_many

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def pristine(bundled, tmp_path_factory) -> Path:
    """The LeNet IR, 16 labelled test samples, a plan and an earlier result made from it, an earlier report."""
    lenet = bundled["lenet"]
    root = tmp_path_factory.mktemp("safety")
    shutil.copy(lenet["xml"], root / "m.xml")
    shutil.copy(Path(lenet["xml"]).with_suffix(".bin"), root / "m.bin")
    with np.load(lenet["test_npz"]) as test:
        x, y = test["x"][:16], test["y"][:16]
    np.save(root / "x.npy", x)
    np.savez(root / "d.npz", x=x, y=y)
    from ovrange.modelio import read_model

    model = read_model(root / "m.xml")
    ovrange.save_protected(ovrange.protect(model, x, subset_size=16), root / "res" / "m_RangeSupervision", "m")
    shutil.copy(root / "res" / "m_RangeSupervision" / "bounds.json", root / "plan.json")
    (root / "old.json").write_text('{"an": "earlier result"}\n')
    (root / "notes.txt").write_text("unrelated\n")
    return root


def _mutate_plan(root: Path, change: Callable[[dict], None]) -> None:
    plan = json.loads((root / "plan.json").read_text())
    change(next(iter(plan["nodes"].values())))
    (root / "plan.json").write_text(json.dumps(plan))


def _npz_claiming(root: Path, size: int) -> None:
    """An .npz whose zip directory declares two members of ``size`` bytes each (a deflate bomb's directory)."""
    path = root / "bomb.npz"
    np.savez(path, x=np.zeros((4, 1, 28, 28), np.float32), y=np.zeros(4, np.int64))
    data = bytearray(path.read_bytes())
    start = 0
    while (start := data.find(b"PK\x01\x02", start)) >= 0:  # central directory: uncompressed size at +24
        data[start + 24:start + 28] = struct.pack("<I", size)
        start += 4
    path.write_bytes(bytes(data))


def _alias_bomb(levels: int = 9, width: int = 9) -> str:
    lines = [f"a0: &a0 [{', '.join(['x'] * width)}]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def _fifo(path: Path) -> None:
    os.mkfifo(path)


def _big_png(root: Path) -> None:
    from PIL import Image

    (root / "images").mkdir()
    Image.new("L", (20000, 20000)).save(root / "images" / "huge.png", compress_level=1)


def _offset_abc(root: Path) -> None:
    text = (root / "m.xml").read_text()
    (root / "m.xml").write_text(text.replace('offset="0"', 'offset="abc"', 1))


def _nested(depth: int) -> str:
    return '{"trials": ' + "[" * depth + "]" * depth + "}"


LONG = "x" * 300
M, DATA, X = "{w}/m.xml", "{w}/d.npz", "{w}/x.npy"
INJECT = ("inject", M, "--data", DATA, "--trials", "20", "--num-samples", "4", "-q")
PROTECT = ("protect", M, "--data", X, "--num-samples", "8", "-o", "{w}/out", "-q")
APPLY = ("protect", M, "--bounds", "{w}/plan.json", "-o", "{w}/out")
CHECK = ("check", M, "{w}/res/m_RangeSupervision/m.xml", "--data", DATA, "--num-samples", "8", "-q")
BENCH = ("benchmark", M, M, "--time", "0.1", "--sessions", "1")


def write(name: str, text: str | bytes) -> Callable[[Path], None]:
    def setup(root: Path) -> None:
        (root / name).write_bytes(text if isinstance(text, bytes) else text.encode())
    return setup


# case -> (setup, command line, exit code, part of the error line)
CASES: dict[str, tuple[Callable[[Path], None] | None, tuple[str, ...], int, str]] = {
    # names are names, never paths
    "model_name ../../escaped": (write("c.json", '{"model": {"model_name": "../../escaped"}}'),
                                 PROTECT + ("--config", "{w}/c.json"), 2, "must be a plain name"),
    "model_name an absolute path": (write("c.json", '{"model": {"model_name": "/tmp/lenet"}}'),
                                    PROTECT + ("--config", "{w}/c.json"), 2, "must be a plain name"),
    "model_name with NUL": (write("c.json", '{"model": {"model_name": "a\\u0000b"}}'),
                            PROTECT + ("--config", "{w}/c.json"), 2, "NUL"),
    "model_name of 300 bytes": (write("c.json", '{"model": {"model_name": "%s"}}' % LONG),
                                PROTECT + ("--config", "{w}/c.json"), 2, "limit of 200"),
    "plan algorithm a path": (lambda w: (w / "plan.json").write_text(
        (w / "plan.json").read_text().replace('"RangeSupervision"', '"../RangeSupervision"', 1)), APPLY, 2,
        "must be a plain name"),
    # outputs never overwrite an input or an earlier result
    "inject --json the model": (None, INJECT + ("--json", M, "--force"), 5, "is (or holds) the input"),
    "inject --json the weights": (None, INJECT + ("--json", "{w}/m.bin", "--force"), 5, "the input"),
    "inject --json the data": (None, INJECT + ("--json", DATA, "--force"), 5, "the input"),
    "inject --json a symlink to the model": (lambda w: (w / "link.json").symlink_to(w / "m.xml"),
                                             INJECT + ("--json", "{w}/link.json", "--force"), 5, "the input"),
    "inject --json a hard link of the data": (lambda w: os.link(w / "d.npz", w / "hard.json"),
                                              INJECT + ("--json", "{w}/hard.json", "--force"), 5, "the input"),
    "inject --json an earlier result": (None, INJECT + ("--json", "{w}/old.json"), 5, "already exists"),
    "inject --report holding the model": (None, INJECT + ("--report", "{w}", "--force"), 5, "the input"),
    "check --json an earlier result": (None, CHECK + ("--json", "{w}/old.json"), 5, "already exists"),
    "check --json the data": (None, CHECK + ("--json", DATA, "--force"), 5, "the input"),
    "benchmark --json the weights": (None, BENCH + ("--json", "{w}/m.bin", "--force"), 5, "the input"),
    "protect --force over the folder of its model": (None, ("protect", "{w}/res/m_RangeSupervision/m.xml",
                                                            "--bounds", "{w}/plan.json", "-o", "{w}/res", "--force"),
                                                     5, "the input"),
    "protect over an earlier result": (None, APPLY[:-1] + ("{w}/res",), 5, "already exists"),
    "--json name too long": (None, INJECT + ("--json", "{w}/" + LONG), 5, "too long"),
    "--data name too long": (None, ("evaluate", M, "--data", "{w}/" + LONG), 4, "too long"),
    "model name too long": (None, ("evaluate", "{w}/" + LONG + ".xml", "--data", DATA), 3, "too long"),
    "--config name too long": (None, INJECT + ("--config", "{w}/" + LONG), 2, "too long"),
    "-o name too long": (None, APPLY[:-1] + ("{w}/" + LONG,), 5, "too long"),
    # non-regular files where a file is expected
    "protect --data a FIFO": (lambda w: _fifo(w / "f.npy"), PROTECT[:3] + ("{w}/f.npy",) + PROTECT[4:], 4,
                              "not a regular file"),
    "evaluate --data a FIFO": (lambda w: _fifo(w / "f.npz"), ("evaluate", M, "--data", "{w}/f.npz"), 4,
                               "not a regular file"),
    "inject --config a FIFO": (lambda w: _fifo(w / "c.yaml"), INJECT + ("--config", "{w}/c.yaml"), 2,
                               "not a regular file"),
    "protect --bounds a FIFO": (lambda w: _fifo(w / "p.json"), APPLY[:3] + ("{w}/p.json",) + APPLY[4:], 2,
                                "not a regular file"),
    "model a FIFO": (lambda w: _fifo(w / "f.xml"), ("evaluate", "{w}/f.xml", "--data", DATA), 3,
                     "not a regular file"),
    "inject --replay a FIFO": (lambda w: _fifo(w / "f.jsonl"), INJECT + ("--replay", "{w}/f.jsonl"), 2,
                               "not a regular file"),
    "--config a folder": (lambda w: (w / "c.yaml").mkdir(), INJECT + ("--config", "{w}/c.yaml"), 2,
                          "is a directory"),
    # bounded reads
    "YAML alias bomb": (write("c.yaml", _alias_bomb()), INJECT + ("--config", "{w}/c.yaml"), 2, "limit"),
    "recursive YAML alias": (write("c.yaml", "x: &a [*a]\n"), INJECT + ("--config", "{w}/c.yaml"), 2, "recursive"),
    "JSON nested 100k deep": (write("c.json", _nested(100_000)), INJECT + ("--config", "{w}/c.json"), 2,
                              "limit of 64 levels"),
    "YAML nested 50k deep": (write("c.yaml", "a: " + "[" * 50_000 + "]" * 50_000 + "\n"),
                              INJECT + ("--config", "{w}/c.yaml"), 2, "limit of 64 levels"),
    "protect config nested 50k deep": (write("c.json", '{"model": ' + "[" * 50_000 + "]" * 50_000 + "}"),
                                       PROTECT + ("--config", "{w}/c.json"), 2, "limit of 64 levels"),
    "0xff byte in a config": (write("c.yaml", b"trials: \xff\n"), INJECT + ("--config", "{w}/c.yaml"), 2,
                              "not UTF-8"),
    "0xff byte in a protect config": (write("c.json", b'{"model": {"model_name": "\xff"}}'),
                                      PROTECT + ("--config", "{w}/c.json"), 2, "not UTF-8"),
    "IR offset=abc": (_offset_abc, ("evaluate", M, "--data", DATA), 3, "offset='abc'"),
    "histogram_bins 1e13": (None, PROTECT + ("-a", "Ranger", "-p", "histogram_bins=10000000000000"), 2,
                            "histogram_bins"),
    ".npy declaring (1e9, 1, 28, 28)": (lambda w: _npy_header(w / "x.npy", (10 ** 9, 1, 28, 28)), PROTECT, 4,
                                        "more than the limit"),
    ".npy shorter than its header says": (lambda w: _npy_header(w / "x.npy", (100, 1, 28, 28)), PROTECT, 4,
                                          "truncated"),
    "truncated .npz": (lambda w: (w / "d.npz").write_bytes((w / "d.npz").read_bytes()[:5000]),
                       ("evaluate", M, "--data", DATA), 4, "cannot read"),
    ".npz directory declaring 6 GB": (lambda w: _npz_claiming(w, 3_000_000_000),
                                      ("evaluate", M, "--data", "{w}/bomb.npz"), 4, "limit"),
    "20000x20000 PNG": (_big_png, ("evaluate", M, "--data", "{w}/images"), 4, "pixels"),
    "shard_size 'abc'": (write("c.yaml", "shard_size: abc\n"), INJECT + ("--config", "{w}/c.yaml"), 2,
                         "shard_size"),
    "lanes 0 in a config": (write("c.yaml", "lanes: 0\n"), INJECT + ("--config", "{w}/c.yaml"), 2, "lanes"),
    "inject --seed -1": (None, INJECT + ("--seed", "-1"), 2, "seed"),
    "protect --seed -1": (None, PROTECT + ("--seed", "-1"), 2, "seed"),
    "check --seed -1": (None, CHECK + ("--seed", "-1", "--min-sdc-reduction", "1", "--trials", "20"), 2, "seed"),
    "trials 1e12 in a config": (write("c.yaml", "trials: 1000000000000\n"), INJECT + ("--config", "{w}/c.yaml"), 2,
                                "limit"),
    "--trials 1e12": (None, INJECT + ("--trials", "1000000000000"), 2, "limit"),
    "--trials 1e12 written 1e12": (None, INJECT + ("--trials", "1e12"), 2, "--trials"),
    "plan low > high": (lambda w: _mutate_plan(w, lambda n: n.update(low=5.0, high=1.0)), APPLY, 2, "above high"),
    "plan NaN bound": (lambda w: (w / "plan.json").write_text(
        (w / "plan.json").read_text().replace('"high": ', '"high": NaN, "x": ', 1)), APPLY, 2, "NaN"),
    "plan per-channel axis 7": (lambda w: _mutate_plan(w, lambda n: n.update(axis=7, low=[0.0] * 6,
                                                                               high=[1.0] * 6)), APPLY, 2, "axis 7"),
    "plan axis -1": (lambda w: _mutate_plan(w, lambda n: n.update(axis=-1, low=[0.0] * 6, high=[1.0] * 6)), APPLY,
                     2, "non-negative"),
}


def _npy_header(path: Path, shape: tuple[int, ...]) -> None:
    from numpy.lib import format as npy

    with open(path, "wb") as handle:
        npy.write_array_header_1_0(handle, {"descr": "<f4", "fortran_order": False, "shape": shape})
        handle.write(b"\0" * 100)


def digest(root: Path) -> dict[str, str]:
    """Every entry under ``root``: a file's SHA-256, 'dir', 'fifo' or a symlink's target."""
    out = {}
    for path in sorted(root.rglob("*")):
        key = str(path.relative_to(root))
        if path.is_symlink():
            out[key] = "-> " + os.readlink(path)
        elif path.is_dir():
            out[key] = "dir"
        elif path.is_fifo():
            out[key] = "fifo"
        else:
            out[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "ovrange", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, stdin=subprocess.DEVNULL)


def assert_one_error(done: subprocess.CompletedProcess, code: int, expected: str = "") -> None:
    lines = done.stderr.strip().splitlines()
    assert done.returncode == code, (done.returncode, done.stderr[-2000:])
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr[-2000:]
    assert "Traceback" not in done.stderr + done.stdout and "internal error" not in lines[0]
    assert expected in lines[0], lines[0]


@pytest.fixture(scope="module")
def outcomes(pristine, tmp_path_factory) -> dict[str, tuple[subprocess.CompletedProcess, dict, dict]]:
    """Every case in its own copy of the workspace; the commands run one after the other in one fresh process
    (tests/console.run_many: most of a process's run would be starting OpenVINO)."""
    root, before, commands = tmp_path_factory.mktemp("cases"), {}, []
    for index, (case, (setup, args, _, _)) in enumerate(CASES.items()):
        work = root / f"case{index}"
        shutil.copytree(pristine, work, symlinks=True)
        if setup:
            setup(work)
        before[case] = digest(work)
        commands.append([a.format(w=work) for a in args])
    done = run_many(commands)
    return {case: (done[i], before[case], digest(root / f"case{i}")) for i, case in enumerate(CASES)}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_error_line_and_changes_nothing(outcomes, case):
    _, _, code, expected = CASES[case]
    done, before, after = outcomes[case]
    assert_one_error(done, code, expected)
    assert after == before  # inputs, earlier results, unrelated files; no debris, nothing new


def test_the_matrix_covers_every_exit_code_and_command():
    assert {code for *_, code, _ in CASES.values()} == {2, 3, 4, 5}
    assert {args[0] for _, args, _, _ in CASES.values()} >= {"protect", "evaluate", "inject", "check", "benchmark"}


def test_inject_json_configs_take_comments_like_protect_configs(pristine, tmp_path):
    work = tmp_path / "w"
    shutil.copytree(pristine, work)
    (work / "c.json").write_text('{\n  // a short campaign\n  "trials": 10, /* few */ "inputs": 4,\n}\n')
    done = run(*[a.format(w=work) for a in INJECT[:4]], "--config", str(work / "c.json"), "--json",
               str(work / "r.json"), "-q")
    assert done.returncode == 0, done.stderr
    assert json.loads((work / "r.json").read_text())["spec"]["trials"] == 10


def test_json_is_replaced_only_with_force(pristine, tmp_path):
    work = tmp_path / "w"
    shutil.copytree(pristine, work)
    args = [a.format(w=work) for a in INJECT] + ["--json", str(work / "old.json")]
    assert_one_error(run(*args), 5, "use --force")
    assert (work / "old.json").read_text() == '{"an": "earlier result"}\n'
    done = run(*args, "--force")
    assert done.returncode == 0, done.stderr
    assert json.loads((work / "old.json").read_text())["schema"] == "ovrange-campaign/1"
    assert sorted(p.name for p in work.iterdir() if p.name.startswith(".")) == []
