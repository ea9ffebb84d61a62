"""The README's codec snippet runs as written (it named inputs it never made) and its targets decode back."""

import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_readme_codec_snippet_runs_and_decodes_its_people_back():
    section = README.read_text().split("## The codec (targets <-> poses)", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    torch.manual_seed(0)
    names: dict = {}
    exec(compile(code, "README.md (codec)", "exec"), names)  # noqa: S102 - our own README
    people = names["poses"][0]
    assert len(people) == 2
    found = people.keypoints[..., :2].sort(0).values
    assert torch.allclose(found, names["keypoints"][..., :2].sort(0).values, atol=1e-3)
