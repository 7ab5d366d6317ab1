"""Serve what the registry approved, the way an endpoint does, through the local serving front.

SageMaker makes a model's uncompressed S3 prefix appear under ``/opt/ml/model`` (and an additional source under
``/opt/ml/additional-model-data-sources/<channel>/``); here each prefix is fetched once into a folder under the work
directory standing for them. Base and adapter stay two prefixes: nothing is copied, re-packed or uploaded in S3, and
the calls are recorded to show it.
"""

from __future__ import annotations

import json
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from demo.s3_folders import download_prefix
from demo.scores import rouge_l
from loraops import s3_layout

#: S3 operations that would write, copy or re-upload a model.
WRITES = ("PutObject", "CopyObject", "UploadPart", "UploadPartCopy", "CreateMultipartUpload", "DeleteObject")


@dataclass
class S3Calls:
    """Every S3 operation a client makes (botocore's before-call event)."""

    operations: list[str] = field(default_factory=list)

    def watch(self, client: Any) -> Any:
        client.meta.events.register(
            "before-call.s3.*", lambda event_name, **_: self.operations.append(event_name.rsplit(".", 1)[1])
        )
        return client

    @property
    def writes(self) -> list[str]:
        return [op for op in self.operations if op in WRITES]


@dataclass(frozen=True)
class Answer:
    """One held-back prompt: dolly's reference answer and the base's, base + adapter's and the merged model's."""

    prompt: str
    reference: str
    base: str
    adapter: str
    merged: str

    @property
    def agree(self) -> bool:
        """Base + adapter answered as the merged model did."""
        return self.adapter == self.merged

    def rouge_l(self, model: str) -> float:
        """ROUGE-L F1 of ``model``'s answer (base, adapter or merged) against the reference."""
        return rouge_l(self.reference, getattr(self, model))


def mount(s3: Any, bucket: str, prefix: str, folder: Path) -> Path:
    """The prefix's objects under ``folder``: SageMaker's model download to the instance."""
    download_prefix(s3, s3_layout.s3_uri(bucket, prefix), folder)
    return folder


def ask(url: str, prompt: str, max_new_tokens: int, adapter: str | None = None) -> str:
    body = {"inputs": prompt, "parameters": {"max_new_tokens": max_new_tokens, "do_sample": False}}
    if adapter:
        body["adapter"] = adapter
    request = urllib.request.Request(
        url + "/invocations",
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=300) as response:
        return json.loads(response.read())["generated_text"]


def serve_and_compare(
    base_dir: Path, adapter_dir: Path, merged_dir: Path, prompts: list[tuple[str, str]], max_new_tokens: int
) -> list[Answer]:
    """The base alone and base + adapter (one front, the adapter chosen per request) and the merged model (another
    front) answer the same prompts greedily."""
    from loraops_serving.app import LocalFront
    from loraops_serving.engine import Engine
    from loraops_serving.service import Service
    from loraops_serving.settings import ServingSettings

    settings = ServingSettings(dtype="float32")
    adapter = adapter_dir.name
    with (
        LocalFront(Service(Engine(base_dir, settings, [adapter_dir]))) as separate,
        LocalFront(Service(Engine(merged_dir, settings))) as merged,
    ):
        return [
            Answer(
                prompt,
                reference,
                base=ask(separate, prompt, max_new_tokens),
                adapter=ask(separate, prompt, max_new_tokens, adapter),
                merged=ask(merged, prompt, max_new_tokens),
            )
            for prompt, reference in prompts
        ]
