"""Deploy on approval: what an approved, rejected or deleted package changes on the environment's endpoint.

- **Adapter approved** (inference-components mode): its group's adapter component is created, or updated to the
  package's adapter. The component names the base component and the adapter's archive (``Container.ArtifactUrl``
  must name one gzip-compressed tar: ``adapter.tar.gz``, packed at registration from the adapter's files only, in
  the version's write-once prefix): no byte of the base is read or copied. An adapter trained on other base weights than
  the served base is refused, naming both digests.
- **Merged approved**: endpoint mode rolls the endpoint to a new model (a copy of the serving model with the
  package's prefix) with a blue/green update that rolls back when an alarm fires, then records the served prefix in
  SSM so the next ``cdk deploy`` keeps it. Inference-components mode gives the package its own component on the
  base component's compute.
- **Rejected or deleted**: the component serving exactly that package is removed. A merged package an endpoint
  serves is kept (an endpoint cannot serve nothing) and the reply says so.

The package's state is read from the registry, not from the event, so late or repeated events do the right thing.
Before anything is served, the objects at the package's prefix are checked against the digests it was registered
with (:meth:`loraops.registry.Registry.verify_content`): a changed, added or missing file is refused, and so is a
package registered by an earlier loraops (no content digest, or a fine-tune that points at its job's output), with
the ``loraops models migrate`` command that fixes it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from loraops import endpoints, s3_layout
from loraops.endpoints import ServingTarget
from loraops.naming import Metadata, OutputMode
from loraops.packages import APPROVED, Package, RegistryError
from loraops.registry import Registry


class DeploymentError(RegistryError):
    """The package cannot be served on this endpoint; nothing was changed."""


class EndpointBusy(RuntimeError):
    """The endpoint is not InService (a blue/green update is under way): nothing was changed; retry later."""


@dataclass
class Deployer:
    registry: Registry
    ssm: Any
    target: ServingTarget

    @property
    def sagemaker(self) -> Any:
        return self.registry.sagemaker

    def apply(self, package_arn: str, event_detail: dict[str, Any] | None = None) -> dict[str, Any]:
        """Bring the endpoint in line with the package's current state; returns what was done and why. A package
        already gone from the registry is taken from the event's detail (DescribeModelPackage's shape) as deleted."""
        try:
            package = self.registry.describe(package_arn)
        except RegistryError:
            if not event_detail or event_detail.get("ModelPackageArn") != package_arn:
                raise
            package = replace(Package.from_description(event_detail), deleting=True)
        kind = package.metadata.get(Metadata.OUTPUT_MODE)
        if kind not in (OutputMode.ADAPTER, OutputMode.MERGED):
            return _reply(package, "none", "base packages are served by pinning them: loraops serve pin")
        if package.status == APPROVED and not package.deleting:
            try:
                self.registry.verify_content(package)  # what is served is what was registered, byte for byte
            except RegistryError as error:
                raise DeploymentError(f"not served: {error}") from None
            return self._serve_adapter(package) if kind == OutputMode.ADAPTER else self._serve_merged(package)
        return self._withdraw(package, kind)

    # -------------------------------------------------------------------------------------------- adapters
    def _serve_adapter(self, package: Package) -> dict[str, Any]:
        if self.target.mode != endpoints.INFERENCE_COMPONENTS:
            raise DeploymentError(
                f"{package.arn}: endpoint {self.target.endpoint} serves one model (mode endpoint); adapters are "
                "deployed as inference components (serving mode inference-components)"
            )
        base = self.sagemaker.describe_inference_component(InferenceComponentName=self.target.base_component)
        wanted = package.metadata.get(Metadata.BASE_WEIGHTS_DIGEST, "")
        try:
            served = self._model_digest(base["Specification"]["ModelName"])
        except DeploymentError as error:
            raise DeploymentError(f"adapter {package.arn} was trained on base weights {wanted}; {error}") from None
        if wanted != served:
            raise DeploymentError(
                f"adapter {package.arn} was trained on base weights {wanted or '(unrecorded)'}; "
                f"{self.target.base_component} serves {served}"
            )
        if not package.metadata.get(Metadata.ADAPTER_ARCHIVE):
            raise DeploymentError(f"{package.arn} has no adapter archive; run: loraops models migrate {package.arn}")
        specification = {
            "BaseInferenceComponentName": self.target.base_component,
            "Container": {"ArtifactUrl": self._served_uri(package)},
        }
        name = endpoints.component_name(self.target.prefix, package.group)
        return self._put_component(name, specification, package)

    # --------------------------------------------------------------------------------------------- merged
    def _serve_merged(self, package: Package) -> dict[str, Any]:
        if self.target.mode == endpoints.ENDPOINT:
            return self._roll_endpoint(package)
        self._endpoint_in_service()  # before the model is created: a retry must not find it half-made
        base = self.sagemaker.describe_inference_component(InferenceComponentName=self.target.base_component)
        model = self._model_like(self.sagemaker.describe_model(ModelName=base["Specification"]["ModelName"]), package)
        specification = {
            "ModelName": model,
            "ComputeResourceRequirements": base["Specification"]["ComputeResourceRequirements"],
        }
        name = endpoints.component_name(self.target.prefix, package.group)
        return self._put_component(name, specification, package, copies=True)

    def _roll_endpoint(self, package: Package) -> dict[str, Any]:
        config = self._endpoint_config(in_service=True)  # nothing is created while an update is under way
        variants = config["ProductionVariants"]
        serving = self.sagemaker.describe_model(ModelName=variants[0]["ModelName"])
        if _source_uri(serving) == self._uri(package):
            return _reply(package, "none", f"{self.target.endpoint} already serves it")
        model = self._model_like(serving, package)
        new_config = endpoints.resource_name(self.target.prefix, "v", package.group, str(package.version))
        request = {
            key: config[key]
            for key in ("DataCaptureConfig", "KmsKeyId", "ExecutionRoleArn", "VpcConfig", "EnableNetworkIsolation")
            if key in config
        }
        request["ProductionVariants"] = [{**_writable(variants[0]), "ModelName": model}]
        self.sagemaker.create_endpoint_config(EndpointConfigName=new_config, **request)
        self.sagemaker.update_endpoint(
            EndpointName=self.target.endpoint,
            EndpointConfigName=new_config,
            DeploymentConfig=endpoints.blue_green(list(self.target.rollback_alarms)),
        )
        self.ssm.put_parameter(
            Name=endpoints.served_model_parameter(self.target.prefix),
            Value=package.model_data_prefix,
            Type="String",
            Overwrite=True,
        )
        return _reply(package, "rolled", f"{self.target.endpoint} -> {new_config} (blue/green)")

    # ------------------------------------------------------------------------------------------- withdraw
    def _withdraw(self, package: Package, kind: str) -> dict[str, Any]:
        why = "deleted" if package.deleting else package.status
        if self.target.mode == endpoints.ENDPOINT:
            if kind == OutputMode.MERGED and self._endpoint_uri() == self._uri(package):
                return _reply(
                    package, "kept", f"{why}, but {self.target.endpoint} serves it: approve another version to roll"
                )
            return _reply(package, "none", f"{why}; not served")
        name = endpoints.component_name(self.target.prefix, package.group)
        component = self._component(name)
        if component is None or self._component_uri(component) != self._served_uri(package):
            return _reply(package, "none", f"{why}; {name} does not serve it")
        self.sagemaker.delete_inference_component(InferenceComponentName=name)
        return _reply(package, "removed", f"{why}: {name} deleted")

    # -------------------------------------------------------------------------------------------- helpers
    def _put_component(
        self, name: str, specification: dict[str, Any], package: Package, copies: bool = False
    ) -> dict[str, Any]:
        runtime = {"RuntimeConfig": {"CopyCount": 1}} if copies else {}
        current = self._component(name)
        if current is not None and self._component_uri(current) == self._served_uri(package):
            return _reply(package, "none", f"{name} already serves it")
        if current is None:
            self.sagemaker.create_inference_component(
                InferenceComponentName=name,
                EndpointName=self.target.endpoint,
                VariantName=endpoints.VARIANT,
                Specification=specification,
                **runtime,
            )
            return _reply(package, "created", name)
        self.sagemaker.update_inference_component(InferenceComponentName=name, Specification=specification)
        return _reply(package, "updated", name)

    def _component(self, name: str) -> dict[str, Any] | None:
        try:
            return self.sagemaker.describe_inference_component(InferenceComponentName=name)
        except self.sagemaker.exceptions.ClientError as error:
            if error.response["Error"]["Code"] in ("ValidationException", "ResourceNotFound"):
                return None
            raise

    def _component_uri(self, component: dict[str, Any]) -> str:
        specification = component.get("Specification", {})
        if "ModelName" in specification:
            return self._model_uri(specification["ModelName"])
        return specification.get("Container", {}).get("ArtifactUrl", "")

    def _model_like(self, model: dict[str, Any], package: Package) -> str:
        """A model like ``model`` (DescribeModel's answer: image, environment, role, network) serving ``package``'s
        prefix."""
        name = endpoints.resource_name(self.target.prefix, package.group, str(package.version))
        container = {k: v for k, v in model["PrimaryContainer"].items() if k not in ("ModelDataUrl", "ModelDataSource")}
        container["ModelDataSource"] = s3_layout.model_data_source(self._uri(package))
        request = {k: model[k] for k in ("ExecutionRoleArn", "VpcConfig", "EnableNetworkIsolation") if k in model}
        self.sagemaker.create_model(ModelName=name, PrimaryContainer=container, **request)
        return name

    def _model_uri(self, model_name: str) -> str:
        return _source_uri(self.sagemaker.describe_model(ModelName=model_name))

    def _model_digest(self, model_name: str) -> str:
        """``sha256:<hex>`` weights digest of the base a model serves: its prefix is ``base/<group>/<content hex>/``,
        the content digest of a registered base package, whose metadata records the weights digest (read from the
        registry: no byte of the base is read)."""
        uri = self._model_uri(model_name)
        parts = s3_layout.split_s3_uri(uri)[1].rstrip("/").split("/") if uri else []
        if len(parts) != 3 or parts[0] != s3_layout.BASE.rstrip("/"):
            raise DeploymentError(f"model {model_name} serves {uri or 'no S3 prefix'}, not a base/<group>/<hex>/")
        base = self.registry.find(parts[1], Metadata.CONTENT_DIGEST, f"sha256:{parts[2]}")
        if base is None:
            raise DeploymentError(f"model {model_name} serves base content sha256:{parts[2]}, no registered base")
        return base.metadata.get(Metadata.WEIGHTS_DIGEST, "")

    def _endpoint_in_service(self) -> dict[str, Any]:
        """DescribeEndpoint's answer; :class:`EndpointBusy` unless the endpoint is InService."""
        endpoint = self.sagemaker.describe_endpoint(EndpointName=self.target.endpoint)
        if endpoint.get("EndpointStatus") != "InService":
            raise EndpointBusy(f"{self.target.endpoint} is {endpoint.get('EndpointStatus')}: try again when InService")
        return endpoint

    def _endpoint_config(self, in_service: bool = False) -> dict[str, Any]:
        """The endpoint config the endpoint runs now (with ``in_service``: :class:`EndpointBusy` unless InService)."""
        if in_service:
            endpoint = self._endpoint_in_service()
        else:
            endpoint = self.sagemaker.describe_endpoint(EndpointName=self.target.endpoint)
        return self.sagemaker.describe_endpoint_config(EndpointConfigName=endpoint["EndpointConfigName"])

    def _endpoint_uri(self) -> str:
        return self._model_uri(self._endpoint_config()["ProductionVariants"][0]["ModelName"])

    def _uri(self, package: Package) -> str:
        return s3_layout.s3_uri(self.registry.bucket, package.model_data_prefix)

    def _served_uri(self, package: Package) -> str:
        """What a component of ``package`` names: an adapter's archive, else (a merged model, or an adapter an earlier
        loraops deployed) the model's prefix."""
        is_adapter = package.metadata.get(Metadata.OUTPUT_MODE) == OutputMode.ADAPTER
        archive = package.metadata.get(Metadata.ADAPTER_ARCHIVE) if is_adapter else None
        return (
            s3_layout.s3_uri(self.registry.bucket, package.model_data_prefix + archive)
            if archive
            else self._uri(package)
        )


#: ProductionVariant fields that DescribeEndpointConfig returns and CreateEndpointConfig accepts.
_VARIANT_FIELDS = (
    "VariantName",
    "InitialInstanceCount",
    "InstanceType",
    "InitialVariantWeight",
    "VolumeSizeInGB",
    "ModelDataDownloadTimeoutInSeconds",
    "ContainerStartupHealthCheckTimeoutInSeconds",
    "ManagedInstanceScaling",
    "RoutingConfig",
)


def _source_uri(model: dict[str, Any]) -> str:
    """The S3 prefix a described model serves ("" when it has none)."""
    return model["PrimaryContainer"].get("ModelDataSource", {}).get("S3DataSource", {}).get("S3Uri", "")


def _writable(variant: dict[str, Any]) -> dict[str, Any]:
    return {k: variant[k] for k in _VARIANT_FIELDS if k in variant}


def _reply(package: Package, action: str, detail: str) -> dict[str, Any]:
    return {
        "package": package.arn,
        "group": package.group,
        "status": package.status,
        "action": action,
        "detail": detail,
    }
