"""A local AWS emulator: moto's server on 127.0.0.1 and a free port, stopped on exit, failure or Ctrl-C."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

from demo.environ import restore_environ, set_environ
from infra.rehearsal.emulator import emulator_client, free_port, start_server

REGION = "us-east-1"
#: Credentials that reach nothing but the emulator (the demo's process sets them; clients here pass them).
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "demo",
    "AWS_SECRET_ACCESS_KEY": "demo",
    "AWS_REGION": REGION,
    "AWS_DEFAULT_REGION": REGION,
}


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
        import logging

        self._saved = set_environ({"MOTO_PORT": str(self.port)})  # where Step Functions send aws-sdk tasks
        logging.getLogger("moto").setLevel(logging.CRITICAL)  # its Step Functions executor narrates each state
        self._server = start_server(self.port)
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
        return emulator_client(service, self.url, REGION, CREDENTIALS["AWS_ACCESS_KEY_ID"])
