"""The docs name only what exists: README.md and docs/*.md are checked against the repository itself by
``tests.doc_checks`` (what it checks is listed there), and README.md links every page of docs/."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.doc_checks import (
    _LINK,
    DOCS,
    ROOT,
    broken_links,
    code_of,
    missing_make_targets,
    missing_paths,
    unknown_trainer_flags,
    unresolved_dotted,
    unrunnable_modules,
    wrong_cli_commands,
)


@pytest.mark.parametrize("page", DOCS, ids=lambda page: str(page.relative_to(ROOT)))
def test_every_name_in_the_docs_exists(page: Path) -> None:
    markdown = page.read_text()
    code = code_of(markdown)
    wrong = {
        "paths": missing_paths(code),
        "make targets": missing_make_targets(code),
        "loraops commands": wrong_cli_commands(code),
        "python -m modules": unrunnable_modules(code),
        "loraops-train flags": unknown_trainer_flags(code, page.name == "trainer.md"),
        "dotted names": unresolved_dotted(code),
        "links": broken_links(page, markdown),
    }
    assert not {kind: names for kind, names in wrong.items() if names}


def test_the_readme_is_a_door_to_every_page() -> None:
    readme = (ROOT / "README.md").read_text()
    linked = {(ROOT / target.partition("#")[0]).resolve() for target in _LINK.findall(readme)}
    assert set(DOCS[1:]) <= linked
    assert "make demo" in readme and "make test" in readme
