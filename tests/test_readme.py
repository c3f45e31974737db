"""The README's self-contained examples run as written: every ```python block right after a
`<!-- runs in tests/test_readme.py -->` line is executed in a fresh interpreter (the other
blocks are fragments that need the user's model, data or a torch.distributed job)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
MARKER = "<!-- runs in tests/test_readme.py -->"


def runnable_blocks() -> list[tuple[int, str]]:
    text = README.read_text()
    blocks = []
    for m in re.finditer(re.escape(MARKER) + r"\n```python\n(.*?)```", text, re.S):
        blocks.append((text.count("\n", 0, m.start()) + 2, m.group(1)))
    return blocks


def test_the_readme_marks_its_runnable_examples():
    # a marker not followed by a python block would silently drop an example from the test
    assert len(runnable_blocks()) == README.read_text().count(MARKER) >= 6


@pytest.mark.parametrize("line,code", runnable_blocks(), ids=lambda v: f"line{v}" if isinstance(v, int) else "")
def test_readme_example_runs(line, code, tmp_path):
    # the same osmos as the suite: the installed one, or the source tree when PYTHONPATH points there
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    if env.get("PYTHONPATH"):  # the example runs in tmp_path: make relative entries absolute
        env["PYTHONPATH"] = os.pathsep.join(str(Path(p).resolve()) for p in env["PYTHONPATH"].split(os.pathsep) if p)
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, f"README.md line {line}:\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}"
