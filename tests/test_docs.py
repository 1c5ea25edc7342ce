"""The docs say how each shipped model was made: the command stored in every multi-head
checkpoint (``meta["command"]``) is written out, word for word, in README.md (the served model)
and docs/ml.md (the whole chain), so the README's model is reproducible as documented."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ml.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
CHAIN = ["ml/weights/multi.pt", "ml/weights/v2.2/multi.pt", "ml/weights/v2.1/multi.pt",
         "ml/weights/v2/multi.pt"]


def commands_in(markdown: Path) -> set[str]:
    """Every command line of the file's code blocks, continuation lines joined."""
    text = markdown.read_text(encoding="utf-8")
    blocks = re.findall(r"```[^\n]*\n(.*?)```", text, flags=re.S)
    joined = [re.sub(r"\\\n\s*", "", block) for block in blocks]
    return {" ".join(line.split()) for block in joined for line in block.splitlines()}


def stored_command(path: str) -> str:
    _, meta = load_checkpoint(ROOT / path)
    return " ".join(str(meta["command"]).split())


def test_readme_gives_the_served_models_command_word_for_word() -> None:
    assert stored_command(CHAIN[0]) in commands_in(ROOT / "README.md")


@pytest.mark.parametrize("path", CHAIN)
def test_ml_docs_give_every_release_command_word_for_word(path: str) -> None:
    assert stored_command(path) in commands_in(ROOT / "docs" / "ml.md")


def test_the_command_reader_sees_a_changed_option() -> None:
    """The check can fail: one option changed is no longer found."""
    command = stored_command(CHAIN[0])
    assert command.replace("--epochs 10", "--epochs 11") not in commands_in(ROOT / "README.md")
