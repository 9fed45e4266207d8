"""Execute every code block of docs/tutorial.md, in order, on the small demo data.

```python blocks run in one namespace; each line of a ```bash block is a ``patchsieve`` command,
run through the real typer app. The working directory is a tmp dir, and
``PATCHSIEVE_TUTORIAL_SIZE=small`` makes the first block write the small demo dataset.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")

DOC = Path(__file__).resolve().parents[1] / "docs" / "tutorial.md"
BLOCK = re.compile(r"^```(python|bash)\n(.*?)^```", re.S | re.M)

pytestmark = pytest.mark.cluster


def blocks() -> list[tuple[str, str]]:
    return [(m.group(1), m.group(2)) for m in BLOCK.finditer(DOC.read_text())]


def test_tutorial_has_python_and_shell_blocks():
    kinds = [k for k, _ in blocks()]
    assert kinds.count("python") >= 6 and kinds.count("bash") >= 3
    text = DOC.read_text()
    assert "ShannonPatchFilterConfig(threshold=7.5)" in text and "sample_idx = 4" in text


def test_committed_images_are_small_and_referenced():
    refs = set(re.findall(r"\]\((img/[^)]+\.png)\)", DOC.read_text()))
    assert refs
    for ref in refs:
        path = DOC.parent / ref
        assert path.exists(), f"{ref} is referenced by the tutorial but not committed"
        assert path.stat().st_size < 200_000


def _run_shell(block: str) -> list[str]:
    from typer.testing import CliRunner

    from patchsieve.cli import app

    outputs = []
    for line in block.strip().splitlines():
        argv = shlex.split(line)
        assert argv[0] == "patchsieve", f"tutorial shell lines must be patchsieve commands: {line}"
        res = CliRunner().invoke(app, argv[1:])
        assert res.exit_code == 0, (line, res.output, res.exception)
        outputs.append(res.output)
    return outputs


def test_tutorial_runs_end_to_end(tmp_path, monkeypatch, capsys):
    import matplotlib.image as mpimg
    import matplotlib.pyplot as plt

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATCHSIEVE_TUTORIAL_SIZE", "small")
    ns: dict = {"__name__": "__tutorial__"}
    shell_out: list[str] = []
    try:
        for kind, code in blocks():
            if kind == "python":
                exec(compile(code, str(DOC), "exec"), ns)  # noqa: S102 - the tutorial's code
            else:
                shell_out += _run_shell(code)
    finally:
        plt.close("all")
    printed = capsys.readouterr().out
    # the data: 6 small samples, read lazily
    assert ns["img"].shape == (6, 256, 256)
    # the seed's maps and mask
    assert ns["shannon_filter_map"].shape == (256, 256)
    # the side-car and the training loop
    sc = ns["sc"]
    assert sc.is_complete and sc.filter_names == ["shannon"]
    assert 0.0 < ns["fo"].mean() < 1.0
    assert np.isfinite(ns["loss"].item())
    assert f"{len(ns['dataset'])} patches per epoch" in printed
    assert "epoch 1: loss" in printed
    assert any("shannon" in out for out in shell_out)
    # every figure the page shows was produced, and none is blank
    refs = set(re.findall(r"\]\((img/[^)]+\.png)\)", DOC.read_text()))
    for ref in refs:
        img = mpimg.imread(str(tmp_path / ref))
        assert img.shape[0] > 100 and img.shape[1] > 100
        assert np.unique(img[..., :3].reshape(-1, 3), axis=0).shape[0] > 10, ref
