"""The docs' checks check: they see what the docs name (a checker that extracts nothing would pass) and fail on
planted mistakes of every kind."""

from __future__ import annotations

from tests.doc_checks import (
    DOCS,
    ROOT,
    broken_links,
    cli_commands,
    code_of,
    missing_make_targets,
    missing_paths,
    named_cli_commands,
    named_dotted,
    named_make_targets,
    named_modules,
    named_paths,
    named_trainer_flags,
    unknown_trainer_flags,
    unresolved_dotted,
    unrunnable_modules,
    wrong_cli_commands,
)


def test_the_checks_see_what_the_docs_name() -> None:
    """Guards against a checker that passes because it extracts nothing."""
    code = [code_of(page.read_text()) for page in DOCS]
    assert sum(len(named_paths(c)) for c in code) > 100
    assert {"demo", "test", "synth", "lint", "deploy", "destroy", "rehearse"} <= {
        target for c in code for target in named_make_targets(c)
    }
    assert {(noun, verb) for c in code for noun, verb, _ in named_cli_commands(c)} == set(cli_commands())
    assert {"demo", "infra.images", "infra.rehearsal", "infra.image_build"} <= {
        m for c in code for m in named_modules(c)
    }
    assert sum(len(named_dotted(c)) for c in code) >= 3
    assert len({flag for c, page in zip(code, DOCS) for flag in named_trainer_flags(c, page.name == "trainer.md")}) > 15


PLANTED = """
See `infra/dlc_images.json` and `loraops_trainer/nowhere.py`; run `make deploy ENV=dev` then `make shipit`.

```bash
loraops models approve <arn> --approver-role R
loraops models bless <arn>
loraops base import ./m --model-id m --no-such-flag
loraops-train --base_model_dir B --learning_rate 1e-4 --lora_rank 8
python -m infra.images
python -m loraops.naming
cat data/dolly/no-such-file.jsonl
```

`--tokens_per_step`, `--token_budget`, `loraops.collections.migrate_member_tags`,
`loraops.collections.no_such_function`, [here](docs/nowhere.md),
[anchor](README.md#no-such-heading).
"""


def test_the_checks_fail_on_planted_mistakes() -> None:
    code = code_of(PLANTED)
    assert missing_paths(code) == [
        "infra/dlc_images.json",
        "loraops_trainer/nowhere.py",
        "data/dolly/no-such-file.jsonl",
    ]
    assert missing_make_targets(code) == ["shipit"]
    assert wrong_cli_commands(code) == ["loraops models bless", "loraops base import --no-such-flag"]
    assert unknown_trainer_flags(code, trainer_page=False) == ["--lora_rank", "--token_budget"]
    assert unrunnable_modules(code) == ["loraops.naming"]  # resolves, but has nothing to run
    assert unresolved_dotted(code) == ["loraops.collections.no_such_function"]
    assert broken_links(ROOT / "README.md", PLANTED) == ["docs/nowhere.md", "README.md#no-such-heading"]
