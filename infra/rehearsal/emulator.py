"""moto's server on 127.0.0.1 and a free port, as one AWS account: what the rehearsal deploys into."""

from __future__ import annotations

import logging
import socket
from typing import Any


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(port: int) -> Any:
    """moto's threaded server on 127.0.0.1:``port``, started, without its line per request."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    return server


def emulator_client(service: str, url: str, region: str, key: str) -> Any:
    """A boto3 client of the emulator at ``url``, with credentials ``key`` that reach nothing else; no retries, so
    an emulator error shows at once."""
    import boto3
    from botocore.config import Config

    return boto3.client(
        service,
        endpoint_url=url,
        region_name=region,
        aws_access_key_id=key,
        aws_secret_access_key=key,
        config=Config(retries={"max_attempts": 1}),
    )


class Emulator:
    """``with Emulator(account) as aws:`` a moto server; ``aws.client("s3", region)`` acts as ``account`` (moto's
    ``x-moto-account-id`` header), so the account written into the templates' ARNs is the emulator's.

    moto keeps its state per process and account, not per server: two servers in one process share what each
    account holds. ``as_account`` gives the same server under another (empty) account.
    """

    def __init__(self, account: str) -> None:
        self.account = account
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._server: Any = None

    def as_account(self, account: str) -> Emulator:
        """This running server, its clients acting as ``account``; stopping stays with this one."""
        view = Emulator.__new__(Emulator)
        view.account, view.port, view.url, view._server = account, self.port, self.url, None
        return view

    def __enter__(self) -> Emulator:
        self._server = start_server(self.port)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def client(self, service: str, region: str) -> Any:
        client = emulator_client(service, self.url, region, "rehearsal")

        def as_account(request: Any, **_: Any) -> None:
            request.headers["x-moto-account-id"] = self.account

        client.meta.events.register("before-send.*.*", as_account)
        return client
