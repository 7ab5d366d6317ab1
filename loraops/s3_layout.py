"""The artifact bucket's key layout: one place that says where everything lives.

```
base/<base-group>/<content-hex>/               uncompressed Hugging Face folder of a base model
datasets/<dataset>/<dataset-hex>/              training / validation files
adapters/<adapter-group>/<job>/output/model/   LoRA adapter written by a training job (uncompressed)
merged/<merged-group>/<job>/output/model/      merged model written by a training job (uncompressed)
finetuned/<group>/<content-hex>/               a registered fine-tune: the job's files, copied once at registration
                                               (an adapter's also packed as adapter.tar.gz)
checkpoints/<job>/                             spot / resume checkpoints
staging/<purpose>/<token>/                     bytes in transit (a Hub import), removed when placed
registrations/<group>/<hex>.json              a registration in progress (claim), removed when it ends
capture/<endpoint>/                            the endpoint's data capture
```

Training jobs write ``<output-root><job>/output/model/`` themselves (``S3OutputPath`` = the root,
``CompressionType=NONE``) with plain writes, which their role may repeat; so registration copies the files the job's
manifest lists, server-side, into ``finetuned/<group>/<content-hex>/`` (written once, never deleted: the bucket
policy), and the package points there. ``<content-hex>``: the digest of every file a version serves (names and
digests, :func:`loraops.manifest.content_digest`); the same bytes give the same prefix.
``<dataset-hex>``: the hex part of the manifest's ``sha256:<hex>`` digest.
Every prefix ends with ``/`` as ``ModelDataSource.S3DataSource`` (``S3Prefix``) requires.
"""

from __future__ import annotations

import re
from typing import Any

from loraops.naming import OutputMode

BASE = "base/"
DATASETS = "datasets/"
ADAPTERS = "adapters/"
MERGED = "merged/"
CHECKPOINTS = "checkpoints/"
STAGING = "staging/"
CAPTURE = "capture/"
REGISTRATIONS = "registrations/"
FINETUNED = "finetuned/"
#: Base versions: written once (conditional writes) and never deleted (the bucket policy's WriteOnceVersions).
WRITE_ONCE_PREFIXES = (BASE,)
#: Registered fine-tune versions: written once and never deleted (WriteOnceFineTuneVersions,
#: NeverDeleteFineTuneVersions), by the registration function only.
FINETUNED_PREFIXES = (FINETUNED,)
#: Prefixes registered packages point at (earlier versions registered job outputs in place): never deleted.
REGISTERED_PREFIXES = (BASE, ADAPTERS, MERGED)
#: Where this loraops's packages live, content-addressed and written once: what deployments and promotions accept
#: (a package registered in place under ADAPTERS or MERGED is migrated first: ``loraops models migrate``).
VERSION_PREFIXES = WRITE_ONCE_PREFIXES + FINETUNED_PREFIXES
#: The adapter packed for inference components (``ArtifactUrl`` must name one .tar.gz), in its version's prefix.
ADAPTER_ARCHIVE = "adapter.tar.gz"

#: Prefixes the SageMaker execution role may only read (endpoints load registered fine-tunes from FINETUNED).
READ_ONLY_PREFIXES = (BASE, DATASETS, FINETUNED)
#: Prefixes training jobs and Studio users write.
READ_WRITE_PREFIXES = (ADAPTERS, MERGED, CHECKPOINTS, CAPTURE)

_DIGEST = re.compile(r"^sha256:([0-9a-f]{64})$")
_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def _segment(value: str, what: str) -> str:
    if not _SEGMENT.match(value) or ".." in value:
        raise ValueError(f"{what} {value!r} is not a valid S3 key segment")
    return value


def digest_segment(digest: str) -> str:
    """``sha256:<64 hex>`` (the manifest's form) -> ``<64 hex>`` (a key segment: S3 keys avoid ``:``)."""
    match = _DIGEST.match(digest)
    if not match:
        raise ValueError(f"digest {digest!r} is not of the form sha256:<64 hex digits>")
    return match.group(1)


def base_model_prefix(base_group: str, content_digest: str) -> str:
    return f"{BASE}{_segment(base_group, 'base group')}/{digest_segment(content_digest)}/"


def finetuned_prefix(group: str, content_digest: str) -> str:
    """Where a registered fine-tune version of ``group`` lies: named by the digest of every file it serves."""
    return f"{FINETUNED}{_segment(group, 'group')}/{digest_segment(content_digest)}/"


def dataset_prefix(dataset: str, dataset_digest: str) -> str:
    return f"{DATASETS}{_segment(dataset, 'dataset')}/{digest_segment(dataset_digest)}/"


def training_output_root(mode: OutputMode, group: str) -> str:
    """``S3OutputPath`` key for a fine-tune job of ``group``; SageMaker appends ``<job>/output/model/``."""
    root = ADAPTERS if mode is OutputMode.ADAPTER else MERGED
    return f"{root}{_segment(group, 'group')}/"


def model_prefix(mode: OutputMode, group: str, job_name: str) -> str:
    """Where a finished job's uncompressed model lies (what ``ModelDataSource`` points at)."""
    return f"{training_output_root(mode, group)}{_segment(job_name, 'job name')}/output/model/"


def checkpoint_prefix(job_name: str) -> str:
    return f"{CHECKPOINTS}{_segment(job_name, 'job name')}/"


def staging_prefix(purpose: str, token: str) -> str:
    """Where bytes wait before their final key is known (e.g. a download whose digest is not known yet)."""
    return f"{STAGING}{_segment(purpose, 'purpose')}/{_segment(token, 'token')}/"


def registration_claim(group: str, token: str) -> str:
    """The claim object of one registration in progress (see
    :meth:`loraops.registration.Registration._register_once`)."""
    return f"{REGISTRATIONS}{_segment(group, 'group')}/{_segment(token, 'token')}.json"


def split_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/key`` -> ``(bucket, key)``."""
    if not uri.startswith("s3://") or not uri[5:].split("/", 1)[0]:
        raise ValueError(f"{uri!r} is not an s3://bucket/key URI")
    bucket, _, key = uri[5:].partition("/")
    return bucket, key


def s3_uri(bucket: str, key: str) -> str:
    return f"s3://{bucket}/{key}"


def model_data_source(uri: Any) -> dict[str, Any]:
    """A container's ``ModelDataSource`` serving the uncompressed folder at ``uri`` (a prefix URI, or a CDK token for
    one), as packages, models and the serving stack's model name it."""
    return {"S3DataSource": {"S3Uri": uri, "S3DataType": "S3Prefix", "CompressionType": "None"}}
