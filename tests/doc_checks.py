"""The checks behind tests/test_docs.py: README.md and docs/*.md name only what exists in the repository.

What is checked, in code (inline spans and fenced blocks, never in prose):
- repository paths (first segment a tracked top-level entry, or a package that ``pyproject.toml`` maps to a folder);
- ``make <target>``: a rule of the Makefile;
- ``loraops <noun> <verb> [--flag ...]``: a command of :func:`loraops.cli.build_parser`, with those flags;
- ``python -m <module>``: a module that resolves (``importlib.util.find_spec``) and runs as a program;
- dotted names such as ``infra.images`` or ``loraops.collections.migrate_member_tags``: the module resolves and the
  name is defined in it;
and every Markdown link between files (and its ``#anchor``) resolves. README.md links every page of docs/.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import re
import subprocess
import tomllib
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from loraops.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

_FENCE = re.compile(r"^```([\w-]*)\n(.*?)^```", re.S | re.M)
_SPAN = re.compile(r"`([^`]+)`")
_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
_MAKE = re.compile(r"\bmake ([a-z][\w-]*)((?: +[a-z][\w-]*)*)")
_CLI = re.compile(r"(?:^|[\s$(`])loraops ([a-z]+) ([a-z|]+)((?:\\\n|[^\n#])*)")
_PYTHON_M = re.compile(r"\bpython3? -m ([A-Za-z_][\w.]*)")
_DOTTED = re.compile(r"^((?:loraops|loraops_trainer|loraops_serving|infra|demo)(?:\.[A-Za-z_]\w*)+)$")
_FLAG = re.compile(r"(?<![\w-])(--[a-z][\w-]*)")
_PLACEHOLDER = re.compile(r"[<>*{}$]|\.\.\.")


@dataclass(frozen=True)
class Code:
    """The code a page shows: inline spans and the lines of fenced blocks (Mermaid pictures left out)."""

    spans: list[str]
    blocks: list[str]

    def texts(self) -> list[str]:
        return [*self.spans, *self.blocks]


def code_of(markdown: str) -> Code:
    blocks = [body for lang, body in _FENCE.findall(markdown) if lang != "mermaid"]
    prose = _FENCE.sub("", markdown)
    spans = [" ".join(span.split()) for span in _SPAN.findall(prose)]
    return Code(spans, blocks)


@cache
def tracked_top_level() -> frozenset[str]:
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return frozenset(line.split("/", 1)[0] for line in files.splitlines() if line)


@cache
def ignored(token: str) -> bool:
    """A path git ignores is made by running something (``.demo/``, ``bench/.gpu/``), not a file of the repository."""
    return subprocess.run(["git", "check-ignore", "-q", "--no-index", token], cwd=ROOT).returncode == 0


@cache
def package_dirs() -> dict[str, str]:
    """``loraops_trainer`` -> ``training_container/loraops_trainer`` etc., as the distribution maps them."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return pyproject["tool"]["setuptools"]["package-dir"]


def repo_path(token: str) -> Path | None:
    """The file a token names, if it names one of the repository's (else None: not a repository path)."""
    token = token.strip("()[],;:'\"").rstrip(".")
    if "/" not in token and token not in tracked_top_level():
        return None
    if _PLACEHOLDER.search(token) or "://" in token or token.startswith(("/", "./", "../")):
        return None
    first, _, rest = token.partition("/")
    if first in tracked_top_level():
        return None if ignored(token) else ROOT / token
    if first in package_dirs() and first not in tracked_top_level():
        return ROOT / package_dirs()[first] / rest
    return None


def named_paths(code: Code) -> list[str]:
    tokens = [span for span in code.spans if " " not in span]
    tokens += [token for block in code.blocks for token in block.split()]
    return [token for token in tokens if repo_path(token) is not None]


def missing_paths(code: Code) -> list[str]:
    return [token for token in named_paths(code) if not repo_path(token).exists()]


@cache
def make_targets() -> frozenset[str]:
    rules = re.findall(r"^([a-z][\w-]*)\s*:(?!=)", (ROOT / "Makefile").read_text(), re.M)
    return frozenset(rules)


def named_make_targets(code: Code) -> list[str]:
    found = []
    for text in code.texts():
        for match in _MAKE.finditer(text):
            found.append(match.group(1))  # further words count only while they are targets (`make lint test`)
            for word in match.group(2).split():
                if word not in make_targets():
                    break
                found.append(word)
    return found


def missing_make_targets(code: Code) -> list[str]:
    return [target for target in named_make_targets(code) if target not in make_targets()]


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:  # argparse exposes its subparsers only through this attribute
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


@cache
def cli_commands() -> dict[tuple[str, str], frozenset[str]]:
    """``(noun, verb)`` -> the options that command accepts."""
    commands = {}
    for noun, noun_parser in _subcommands(build_parser()).items():
        for verb, verb_parser in _subcommands(noun_parser).items():
            commands[(noun, verb)] = frozenset(verb_parser._option_string_actions)
    return commands


def named_cli_commands(code: Code) -> list[tuple[str, str, list[str]]]:
    """Each ``loraops <noun> <verb>`` with the flags written after it on its (continued) line."""
    found = []
    for text in code.texts():
        for match in _CLI.finditer(text):
            flags = _FLAG.findall(match.group(3))
            found += [(match.group(1), verb, flags) for verb in match.group(2).split("|")]
    return found


def wrong_cli_commands(code: Code) -> list[str]:
    wrong = []
    for noun, verb, flags in named_cli_commands(code):
        options = cli_commands().get((noun, verb))
        if options is None:
            wrong.append(f"loraops {noun} {verb}")
        wrong += [f"loraops {noun} {verb} {flag}" for flag in flags if options is not None and flag not in options]
    return wrong


def runnable(module: str) -> bool:
    """``python -m module`` would run something: a package with ``__main__`` or a module with a main guard."""
    try:
        spec = importlib.util.find_spec(module)
    except ModuleNotFoundError:
        return False
    if spec is None:
        return False
    if spec.submodule_search_locations is not None:
        return importlib.util.find_spec(f"{module}.__main__") is not None
    if spec.origin is None or not spec.origin.endswith(".py"):
        return True  # a compiled or built-in module: its spec resolving is all that can be checked
    return '__name__ == "__main__"' in Path(spec.origin).read_text()


def named_modules(code: Code) -> list[str]:
    return [module for text in code.texts() for module in _PYTHON_M.findall(text)]


def unrunnable_modules(code: Code) -> list[str]:
    return [module for module in named_modules(code) if not runnable(module)]


def _fields(source: Path, class_name: str) -> set[str]:
    """The annotated fields of a dataclass, read from its source (importing the trainer would import torch)."""
    for node in ast.parse(source.read_text()).body:
        if isinstance(node, ast.ClassDef) and node.name == class_name:
            return {item.target.id for item in node.body if isinstance(item, ast.AnnAssign)}
    raise AssertionError(f"{class_name} not found in {source}")


@cache
def trainer_flags() -> frozenset[str]:
    """``loraops-train``'s flags: loraops' TrainConfig and transformers' TrainingArguments, parsed together."""
    settings = ROOT / package_dirs()["loraops_trainer"] / "settings.py"
    training_args = Path(importlib.util.find_spec("transformers.training_args").origin)
    names = _fields(settings, "TrainConfig") | _fields(training_args, "TrainingArguments")
    return frozenset(f"--{name}" for name in names)


def named_trainer_flags(code: Code, trainer_page: bool) -> list[str]:
    """Flags on ``loraops-train`` / ``train.py`` lines, and ``--flag`` spans (every one on the trainer's page,
    snake_case ones elsewhere: the ``loraops`` command's flags are kebab-case)."""
    found = []
    for text in code.texts():
        for match in re.finditer(r"(?:loraops-train|train\.py)((?:\\\n|[^\n#])*)", text):
            found += _FLAG.findall(match.group(1))
    for span in code.spans:
        flag = re.match(r"^(--[a-z][\w-]*)(?: [^<]*)?$", span)
        if flag and (trainer_page or "_" in flag.group(1)):
            found.append(flag.group(1))
    return found


def unknown_trainer_flags(code: Code, trainer_page: bool) -> list[str]:
    return [flag for flag in named_trainer_flags(code, trainer_page) if flag not in trainer_flags() | {"--help"}]


def _defines(source_path: Path, names: list[str]) -> bool:
    """``names`` (a top-level name, then attributes of a class) are defined in the module's source."""
    scope: list[ast.stmt] = ast.parse(source_path.read_text()).body
    for name in names:
        found = None
        for node in scope:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) and node.name == name:
                found = node
            elif isinstance(node, ast.Assign | ast.AnnAssign):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                if any(isinstance(target, ast.Name) and target.id == name for target in targets):
                    found = node
        if found is None:
            return False
        scope = found.body if isinstance(found, ast.ClassDef) else []
    return True


def resolves(dotted: str) -> bool:
    """The longest importable prefix is a module, and what follows it is defined there."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            spec = importlib.util.find_spec(".".join(parts[:cut]))
        except ModuleNotFoundError:
            spec = None
        if spec is not None:
            rest = parts[cut:]
            return not rest or (spec.origin is not None and _defines(Path(spec.origin), rest))
    return False


def named_dotted(code: Code) -> list[str]:
    return [span for span in code.spans if _DOTTED.match(span)]


def unresolved_dotted(code: Code) -> list[str]:
    return [name for name in named_dotted(code) if not resolves(name)]


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = _FENCE.sub("", page.read_text())
    return {_slug(heading) for heading in re.findall(r"^#{1,6} (.+)$", text, re.M)}


def broken_links(page: Path, markdown: str) -> list[str]:
    broken = []
    for target in _LINK.findall(markdown):
        if re.match(r"^[a-z]+:", target):
            continue  # http(s), mailto: not this repository's
        file, _, anchor = target.partition("#")
        resolved = (page.parent / file).resolve() if file else page
        if not resolved.exists() or (anchor and resolved.suffix == ".md" and anchor not in anchors(resolved)):
            broken.append(target)
    return broken
