"""What the local AWS emulator lacks for serving, and a recorder of the calls a deployment makes.

moto 5.2.5 answers 500 NotImplemented for inference components and ``UpdateEndpoint``, and 500 for an endpoint
config without a model (the inference-components shape). :class:`SageMakerWithComponents` passes every other call to
the emulator over HTTP and answers those itself: each request is first checked against botocore's own model of the
SageMaker API (the check the real client does before sending), then kept in memory so describe/update/delete see it.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from botocore.exceptions import ClientError, ParamValidationError
from botocore.validate import ParamValidator

STANDS_IN_FOR = (
    "create_inference_component",
    "describe_inference_component",
    "update_inference_component",
    "delete_inference_component",
    "update_endpoint",
)


STAND_IN_CALL = "stand-in-call"


class SageMakerWithComponents:
    """An emulator client whose inference-component and UpdateEndpoint calls are checked and answered here."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self.components: dict[str, dict[str, Any]] = {}
        self.endpoint_updates: list[dict[str, Any]] = []

    def __getattr__(self, name: str) -> Any:
        if name in STANDS_IN_FOR:
            return lambda **params: self._answer(name, params)
        if name == "describe_endpoint":
            return self._describe_endpoint
        return getattr(self._client, name)

    def _describe_endpoint(self, **params: Any) -> dict[str, Any]:
        """The emulator's endpoint, on the config of the last update answered here (as AWS shows after a roll)."""
        endpoint = self._client.describe_endpoint(**params)
        updates = [u for u in self.endpoint_updates if u["EndpointName"] == params["EndpointName"]]
        return {**endpoint, "EndpointConfigName": updates[-1]["EndpointConfigName"]} if updates else endpoint

    def _answer(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        operation = "".join(part.title() for part in method.split("_"))
        shape = self._client.meta.service_model.operation_model(operation).input_shape
        report = ParamValidator().validate(params, shape)
        if report.has_errors():
            raise ParamValidationError(report=report.generate_report())
        # Seen by CallRecorder like the calls that go over HTTP (botocore's own before-call handlers need a request).
        self._client.meta.events.emit(f"{STAND_IN_CALL}.sagemaker.{operation}", params=params)
        name = params.get("InferenceComponentName", "")
        if method == "update_endpoint":
            self.endpoint_updates.append(params)
            return {"EndpointArn": f"arn:aws:sagemaker:us-east-1:123456789012:endpoint/{params['EndpointName']}"}
        if method == "create_inference_component":
            if name in self.components:
                raise _error("ValidationException", f"Cannot create already existing inference component {name}")
            self.components[name] = {**params, "CreationTime": dt.datetime.now(dt.UTC)}
            return {"InferenceComponentArn": f"arn:aws:sagemaker:us-east-1:123456789012:inference-component/{name}"}
        if name not in self.components:
            raise _error("ValidationException", f"Could not find inference component {name}")
        if method == "describe_inference_component":
            return dict(self.components[name])
        if method == "update_inference_component":
            self.components[name].update({k: v for k, v in params.items() if k != "InferenceComponentName"})
            return {"InferenceComponentArn": name}
        del self.components[name]
        return {}


def _error(code: str, message: str) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": message}}, "InferenceComponent")


class CallRecorder:
    """Every API call the given clients make, as ``(service, operation, params)``, through botocore's events."""

    def __init__(self, *clients: Any) -> None:
        self.calls: list[tuple[str, str, dict[str, Any]]] = []
        for client in clients:
            client.meta.events.register("before-call.*.*", self._record)
            client.meta.events.register(f"{STAND_IN_CALL}.*.*", self._record)

    def _record(self, event_name: str, params: dict[str, Any], **_: Any) -> None:
        _, service, operation = event_name.split(".", 2)
        self.calls.append((service, operation, params))

    def of(self, service: str) -> list[tuple[str, dict[str, Any]]]:
        return [(operation, params) for s, operation, params in self.calls if s == service]
