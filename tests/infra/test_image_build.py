"""Each image's install step, without Docker: the distribution builds from exactly the context its build copies."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from infra.image_build import IMAGES, REPO_ROOT, ImageBuild, stage

#: The packages and commands every image's ``pip install --no-deps`` must produce.
PACKAGES = ("loraops/__init__.py", "loraops/dlc_images.json", "loraops_trainer/__init__.py", "loraops_serving/app.py")
COMMANDS = ("loraops = loraops.cli:main", "loraops-train = loraops_trainer.cli:main", "loraops-serve")


def files_under(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


def build_wheel(context: Path, out: Path) -> subprocess.CompletedProcess:
    """What the Dockerfiles' ``pip install --no-deps`` does first: build the distribution from the context (a copy:
    the build writes into its source folder)."""
    source = shutil.copytree(context, out / "source")
    return subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module", params=sorted(IMAGES))
def staged(request, tmp_path_factory) -> tuple[ImageBuild, Path]:
    image = IMAGES[request.param]
    return image, stage(image, tmp_path_factory.mktemp(f"{request.param}-context") / "context")


def test_the_distribution_installs_from_exactly_the_images_context(staged, tmp_path):
    image, context = staged
    result = build_wheel(context, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = tmp_path.glob("loraops-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = next(archive.read(n).decode() for n in names if n.endswith("entry_points.txt"))
    assert set(PACKAGES) <= names
    assert all(command in entry_points for command in COMMANDS), entry_points


def test_every_file_the_dockerfile_copies_or_runs_is_in_the_context(staged):
    image, context = staged
    dockerfile = (context / image.dockerfile).read_text()
    copied = [s for line in re.findall(r"^COPY (.+)$", dockerfile, re.M) for s in line.split()[:-1]]
    assert [s for s in copied if s != "." and not (context / s).exists()] == []
    # Paths the RUN steps use from the copied source: /opt/loraops[/src]/<path in the repository>.
    used = re.findall(r"/opt/loraops(?:/src)?/((?:training|serving)_container/[\w./-]+)", dockerfile)
    assert used and [p for p in used if not (context / p).exists()] == []


def test_the_context_holds_nothing_else(staged):
    image, context = staged
    expected = {
        str(p.relative_to(REPO_ROOT))
        for source in image.sources
        for p in [REPO_ROOT / source, *(REPO_ROOT / source).rglob("*")]
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    }
    assert files_under(context) == expected


def test_the_synthesized_trainer_asset_is_the_staged_context(synthesized, tmp_path):
    """CDK stages the asset that `cdk deploy` builds with the same rules as :func:`stage` (no configured
    environment uses the serving engine that builds the serving image)."""
    context = stage(IMAGES["trainer"], tmp_path / "context")
    env = next(iter(synthesized.values()))
    outdir = Path(env.training.node.root.synth().directory)
    asset = outdir / f"asset.{env.training.image.asset_hash}"
    assert files_under(asset) == files_under(context)


def test_a_context_missing_a_source_of_the_distribution_fails_the_build(tmp_path):
    """The check above can fail: the trainer's context without the serving package (as 21821b4 listed it)."""
    context = stage(IMAGES["trainer"], tmp_path / "context")
    shutil.rmtree(context / "serving_container" / "loraops_serving")
    result = build_wheel(context, tmp_path / "out")
    assert result.returncode != 0
    assert "serving_container/loraops_serving" in result.stdout + result.stderr
