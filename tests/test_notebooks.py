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


def test_quickstart_runs_trains_predicts_and_draws(tmp_path):
    """A kernel, a tiny training run and a prediction: 12 s on the idle 2-core VM."""
    nb = nbformat.read(NOTEBOOKS[[p.name for p in NOTEBOOKS].index("quickstart.ipynb")], as_version=4)
    # a CellExecutionError (with the failing cell and its traceback) fails the test
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "people found" in text and "checkpoint:" in text and "steps, last train loss" in text
    pictures = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(pictures) == 3  # targets, predicted people, predicted maps
    assert not list(tmp_path.iterdir())  # the run went to a temporary folder, not the working directory
