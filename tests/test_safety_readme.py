"""The README's examples, run as written (blocks marked ``<!-- readme-test -->``), so they cannot rot.

They run in order in a scratch folder that sees the repository's ``build/`` and ``configs/`` (the README's paths
are relative to a clone), against the bundled LeNet, through the real console entry point.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MARK = "<!-- readme-test -->"


def readme_commands(text: str) -> list[list[str]]:
    """Every command of the marked bash blocks: continuation lines joined, comments dropped."""
    commands = []
    for block in re.findall(re.escape(MARK) + r"\s*```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words:
                commands.append(words)
    return commands


def test_readme_examples_run(bundled, tmp_path):
    commands = readme_commands((ROOT / "README.md").read_text())
    assert {words[1] for words in commands} >= {"protect", "evaluate", "benchmark", "check"}
    for name in ("build", "configs"):
        (tmp_path / name).symlink_to(ROOT / name)
    for words in commands:
        assert words[0] == "ovrange"
        done = subprocess.run([sys.executable, "-m", "ovrange", *words[1:]], cwd=tmp_path, capture_output=True,
                              text=True, timeout=600)
        assert done.returncode == 0, f"{' '.join(words)}\n{done.stderr}"
        assert "Traceback" not in done.stderr
    assert (tmp_path / "results" / "check.json").is_file()
