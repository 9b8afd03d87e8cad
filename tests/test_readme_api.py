"""The README's Python API example runs as written: found under its heading, executed in a fresh namespace, it
distils its student (the student's and the heads' weights move, the teacher's do not, every loss term is finite)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import famkd.distill
from famkd.distill import Distiller

README = Path(__file__).resolve().parents[1] / "README.md"
HEADING = "### Distil your own models in your own loop (Python API)"


def readme_section(text: str, heading: str) -> str:
    """The README's text from `heading` to the next heading of the same or a higher level."""
    lines = text.splitlines()
    if heading not in lines:
        raise AssertionError(f"README.md has no section {heading!r}")
    start = lines.index(heading) + 1
    level = len(heading) - len(heading.lstrip("#"))
    section = []
    in_code = False
    for line in lines[start:]:
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and re.match(rf"#{{1,{level}}} ", line):
            break
        section.append(line)
    return "\n".join(section)


def python_blocks(section: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```$", section, re.MULTILINE | re.DOTALL)


def example() -> str:
    blocks = python_blocks(readme_section(README.read_text(), HEADING))
    assert len(blocks) == 1, f"the section {HEADING!r} should hold one python block, found {len(blocks)}"
    return blocks[0]


def test_the_section_holds_one_short_python_example():
    code = example()
    assert len(code.splitlines()) <= 30
    assert "create_distiller(" in code and "DataLoader(" in code


def test_the_readme_example_runs_and_distils(monkeypatch, capsys):
    built: list[tuple[Distiller, dict[str, torch.Tensor], dict[str, torch.Tensor]]] = []
    create = famkd.distill.create_distiller

    def recording_create(*args, **kwargs):  # the weights before training, to see what the loop moved
        distiller = create(*args, **kwargs)
        student = {k: v.clone() for k, v in distiller.student.state_dict().items()}
        heads = {k: v.clone() for k, v in distiller.head_state_dict().items()}
        built.append((distiller, student, heads))
        return distiller

    monkeypatch.setattr(famkd.distill, "create_distiller", recording_create)
    monkeypatch.setenv("FAMKD_COMPILE_KERNELS", "never")  # seconds of compiling would dwarf the example
    torch.manual_seed(0)
    namespace: dict = {"__name__": "readme_example"}
    exec(compile(example(), "README.md (Python API example)", "exec"), namespace)

    assert len(built) == 1, "the example builds one distiller through famkd.distill.create_distiller"
    distiller, student_before, heads_before = built[0]
    assert namespace["distiller"] is distiller
    assert distiller.student is namespace["student"] and distiller.teacher is namespace["teacher"]
    assert distiller.training and not distiller.teacher.training

    losses = namespace["losses"]
    assert set(losses) == {"ce", "fam_kd"}
    assert all(torch.isfinite(loss) for loss in losses.values())
    assert losses["fam_kd"] > 0  # the feature term counts (warm-up 1/20 at epoch 1, 2/20 at epoch 2)

    def moved(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> list[str]:
        return [k for k, v in before.items() if v.is_floating_point() and not torch.equal(v, after[k])]

    student_after = distiller.student.state_dict()
    assert set(moved(student_before, student_after)) >= {k for k in student_before if k.endswith("weight")}
    assert moved(heads_before, distiller.head_state_dict()), "the FAM heads were not trained"
    assert not any(p.requires_grad for p in distiller.teacher.parameters())

    printed = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in printed] == ["1", "2"]  # one line per epoch


@pytest.mark.parametrize(
    "change",
    [
        ("### Distil your own models in your own loop (Python API)", "### Distil your own models"),
        ("```python\nimport torch\nfrom torch import nn\n", "```\nimport torch\nfrom torch import nn\n"),
    ],
    ids=["heading renamed", "block not python"],
)
def test_a_renamed_section_or_a_missing_block_is_reported(change):
    text = README.read_text()
    old, new = change
    assert old in text
    broken = text.replace(old, new)
    with pytest.raises(AssertionError):
        blocks = python_blocks(readme_section(broken, HEADING))
        assert len(blocks) == 1
