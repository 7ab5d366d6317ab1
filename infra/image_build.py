"""The images built from this repository: one definition of each image's build context.

Both images install the ``loraops`` distribution, so each context holds what ``pip install .`` reads (derived from
``pyproject.toml``, never listed by hand) plus the few files its Dockerfile uses beside it. The stacks pass
:meth:`ImageBuild.docker_ignore` to CDK; :func:`stage` copies the same context with CDK's own copy, for a build by
hand and for the test that builds the wheel from it:

    python -m infra.image_build trainer /tmp/trainer-context
    docker build -f /tmp/trainer-context/training_container/Dockerfile --build-arg BASE_IMAGE=<uri> /tmp/trainer-context
"""

from __future__ import annotations

import argparse
import sys
import tomllib
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import aws_cdk as cdk
from aws_cdk import aws_ecr_assets as ecr_assets
from constructs import Construct

REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class ImageBuild:
    """One image: its Dockerfile and the files it needs beside the distribution (paths from the repository root)."""

    dockerfile: str
    extra: tuple[str, ...] = ()

    @property
    def sources(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys((*distribution_sources(), self.dockerfile, *self.extra)))

    def docker_ignore(self) -> list[str]:
        """The build context in Docker ignore syntax: everything out, then these sources back in."""
        included = [f"!{path}/**" if (REPO_ROOT / path).is_dir() else f"!{path}" for path in self.sources]
        return ["**", *included, "**/__pycache__", "**/*.pyc", "**/*.egg-info"]


@cache
def distribution_sources() -> tuple[str, ...]:
    """What building the ``loraops`` distribution reads: ``pyproject.toml``, its readme, every package directory
    it maps and every file its dynamic metadata names (the optional-dependency requirement files)."""
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    setuptools = project["tool"]["setuptools"]
    files = [spec["file"] for spec in setuptools["dynamic"].get("optional-dependencies", {}).values()]
    paths = ["pyproject.toml", project["project"]["readme"], *setuptools["package-dir"].values()]
    paths += [name for group in files for name in ([group] if isinstance(group, str) else group)]
    return tuple(dict.fromkeys(paths))


#: The QLoRA trainer on the AWS Hugging Face training image (``training_container/Dockerfile``).
TRAINER = ImageBuild(
    "training_container/Dockerfile",
    extra=(
        "training_container/requirements.txt",
        "training_container/requirements-gpu.txt",
        "training_container/train.py",
    ),
)
#: loraops_serving in DJL Serving's Python engine on the LMI image (``serving_container/Dockerfile``).
SERVING = ImageBuild("serving_container/Dockerfile", extra=("serving_container/model.py",))
IMAGES = {"trainer": TRAINER, "serving": SERVING}


def repository_image(
    scope: Construct, construct_id: str, image: ImageBuild, base_image: str, **build_args: str
) -> ecr_assets.DockerImageAsset:
    """``image`` built on ``base_image``; synth only stages its context, ``cdk deploy`` builds and pushes it."""
    return ecr_assets.DockerImageAsset(
        scope,
        construct_id,
        directory=str(REPO_ROOT),
        file=image.dockerfile,
        exclude=image.docker_ignore(),
        ignore_mode=cdk.IgnoreMode.DOCKER,
        build_args={"BASE_IMAGE": base_image, **build_args},
        platform=ecr_assets.Platform.LINUX_AMD64,
    )


def stage(image: ImageBuild, destination: Path) -> Path:
    """Copy ``image``'s build context to ``destination`` exactly as CDK stages the asset (same copy, same rules)."""
    cdk.FileSystem.copy_directory(
        str(REPO_ROOT),
        str(destination),
        cdk.CopyOptions(exclude=image.docker_ignore(), ignore_mode=cdk.IgnoreMode.DOCKER),
    )
    return destination


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.image_build", description=stage.__doc__)
    parser.add_argument("image", choices=sorted(IMAGES), help="which image's build context")
    parser.add_argument("destination", type=Path, help="an empty or new folder")
    args = parser.parse_args(argv)
    if args.destination.exists() and any(args.destination.iterdir()):
        parser.error(f"{args.destination} is not empty")
    stage(IMAGES[args.image], args.destination)
    print(f"{args.destination}: build with docker build -f {args.destination / IMAGES[args.image].dockerfile} ...")
    return 0


if __name__ == "__main__":
    sys.exit(main())
