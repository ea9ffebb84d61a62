"""The notebooks run from top to bottom (in a fresh kernel of this interpreter) and are committed without outputs."""

from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).parents[1] / "notebooks").glob("*.ipynb"))


def test_there_is_a_quickstart_and_it_is_committed_without_outputs():
    assert "quickstart.ipynb" in [p.name for p in NOTEBOOKS]
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert all(not c.outputs and c.execution_count is None for c in code), f"{path.name}: clear its outputs"


def test_quickstart_runs_trains_predicts_and_draws(tmp_path, monkeypatch):
    """A kernel, a tiny training run and a prediction: 12 s on the idle 2-core VM."""
    nb = nbformat.read(NOTEBOOKS[[p.name for p in NOTEBOOKS].index("quickstart.ipynb")], as_version=4)
    workdir, tmpdir = tmp_path / "cwd", tmp_path / "tmp"
    workdir.mkdir(), tmpdir.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmpdir))  # the kernel inherits it: the run's checkpoint lands in tmpdir
    # a CellExecutionError (with the failing cell and its traceback) fails the test
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(workdir)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "people found" in text and "checkpoint:" in text and "steps, last train loss" in text
    pictures = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(pictures) == 3  # targets, predicted people, predicted maps
    assert not list(workdir.iterdir())  # the run went to a temporary folder, not the working directory
    (checkpoint,) = [line.split(": ", 1)[1] for line in text.splitlines() if line.startswith("checkpoint: ")]
    assert Path(checkpoint).relative_to(tmpdir).parts[0].startswith("strongpose_quickstart_")
    assert not list(tmpdir.iterdir())  # and the notebook removed it (~180 MB of checkpoints were left behind)
