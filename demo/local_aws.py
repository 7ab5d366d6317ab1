"""A local AWS emulator: moto's server on 127.0.0.1 and a free port, stopped on exit, failure or Ctrl-C."""

from __future__ import annotations

import json
import socket
import urllib.request
from typing import Any

from demo.environ import restore_environ, set_environ

REGION = "us-east-1"
#: Credentials that reach nothing but the emulator (the demo's process sets them; clients here pass them).
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "demo",
    "AWS_SECRET_ACCESS_KEY": "demo",
    "AWS_REGION": REGION,
    "AWS_DEFAULT_REGION": REGION,
}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class LocalAWS:
    """``with LocalAWS() as aws:`` a fresh emulator; ``aws.client("s3")`` talks to it over HTTP.

    Step Functions really execute state machines here (their ``aws-sdk`` tasks are sent back to this server), so a
    workflow's definition runs as it would in AWS, against the emulator's SageMaker.
    """

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._server: Any = None
        self._saved: dict[str, str | None] = {}

    def __enter__(self) -> LocalAWS:
        from moto.server import ThreadedMotoServer

        self._saved = set_environ({"MOTO_PORT": str(self.port)})  # where Step Functions send aws-sdk tasks
        import logging

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
        logging.getLogger("moto").setLevel(logging.CRITICAL)  # its Step Functions executor narrates each state
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()
        self.configure({"stepfunctions": {"execute_state_machine": True}})
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.stop()
        restore_environ(self._saved)

    def configure(self, settings: dict[str, Any]) -> None:
        """moto's own configuration API (``/moto-api/config``)."""
        body = json.dumps(settings).encode()
        urllib.request.urlopen(urllib.request.Request(f"{self.url}/moto-api/config", data=body, method="POST")).read()

    def reset(self) -> None:
        urllib.request.urlopen(urllib.request.Request(f"{self.url}/moto-api/reset", method="POST")).read()

    def client(self, service: str) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.client(
            service,
            endpoint_url=self.url,
            region_name=REGION,
            aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            config=Config(retries={"max_attempts": 1}),
        )
