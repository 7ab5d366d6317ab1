"""Network: an isolated VPC with flow logs and the endpoints Studio and SageMaker jobs need."""

from __future__ import annotations

from dataclasses import dataclass

import aws_cdk as cdk
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from constructs import Construct

from infra.logs import encrypted_log_group
from infra.nag import acknowledge, acknowledge_cdk_provider
from infra.props import EnvironmentBasics, Placement

#: Interface endpoints a VPC-only Studio domain and in-VPC training/serving need (no internet route).
INTERFACE_ENDPOINTS: dict[str, ec2.InterfaceVpcEndpointAwsService] = {
    "SageMakerApi": ec2.InterfaceVpcEndpointAwsService.SAGEMAKER_API,
    "SageMakerRuntime": ec2.InterfaceVpcEndpointAwsService.SAGEMAKER_RUNTIME,
    "SageMakerStudio": ec2.InterfaceVpcEndpointAwsService.SAGEMAKER_STUDIO,
    "SageMakerNotebook": ec2.InterfaceVpcEndpointAwsService.SAGEMAKER_NOTEBOOK,
    "Sts": ec2.InterfaceVpcEndpointAwsService.STS,
    "EcrApi": ec2.InterfaceVpcEndpointAwsService.ECR,
    "EcrDocker": ec2.InterfaceVpcEndpointAwsService.ECR_DOCKER,
    "CloudWatchLogs": ec2.InterfaceVpcEndpointAwsService.CLOUDWATCH_LOGS,
    "Kms": ec2.InterfaceVpcEndpointAwsService.KMS,
    # per-step training metrics (SageMaker Experiments' BatchPutMetrics)
    "SageMakerMetrics": ec2.InterfaceVpcEndpointAwsService.SAGEMAKER_METRICS,
    # cloudwatch:PutMetricData
    "CloudWatchMonitoring": ec2.InterfaceVpcEndpointAwsService.CLOUDWATCH_MONITORING,
    # the trainer image URI parameter
    "Ssm": ec2.InterfaceVpcEndpointAwsService.SSM,
    # Model Registry collections from Studio: resource-groups:* (com.amazonaws.<region>.resource-groups) and the
    # Resource Groups Tagging API (com.amazonaws.<region>.tagging) that lists a collection's members
    "ResourceGroups": ec2.InterfaceVpcEndpointAwsService.RESOURCE_GROUPS,
    "Tagging": ec2.InterfaceVpcEndpointAwsService.TAGGING,
}
#: Endpoints whose services document VPC endpoint policies; the others (Studio, notebook, metrics, resource groups,
#: tagging) keep the default full-access policy.
POLICY_ENDPOINTS = frozenset(
    {
        "SageMakerApi",
        "SageMakerRuntime",
        "Sts",
        "EcrApi",
        "EcrDocker",
        "CloudWatchLogs",
        "Kms",
        "CloudWatchMonitoring",
        "Ssm",
    }
)

HTTPS = ec2.Port.tcp(443)


@dataclass(frozen=True, kw_only=True)
class NetworkProps(EnvironmentBasics):
    """The VPC's range and zones; whether endpoint policies confine the VPC's endpoints (S3: to the artifact
    bucket)."""

    availability_zones: tuple[str, ...]
    vpc_cidr: str
    endpoint_policies: bool
    artifact_bucket_name: str


class NetworkStack(cdk.Stack):
    """VPC with isolated subnets only; AWS services are reached through VPC endpoints."""

    def __init__(self, scope: Construct, construct_id: str, *, props: NetworkProps, **kwargs) -> None:
        self._zones = list(props.availability_zones)
        super().__init__(scope, construct_id, **kwargs)

        flow_log_group = encrypted_log_group(self, "FlowLogs", props, "flow-logs")
        self.vpc = ec2.Vpc(
            self,
            "Vpc",
            ip_addresses=ec2.IpAddresses.cidr(props.vpc_cidr),
            availability_zones=self._zones,
            nat_gateways=0,
            subnet_configuration=[
                ec2.SubnetConfiguration(name="isolated", subnet_type=ec2.SubnetType.PRIVATE_ISOLATED, cidr_mask=20)
            ],
            flow_logs={
                "all-traffic": ec2.FlowLogOptions(
                    destination=ec2.FlowLogDestination.to_cloud_watch_logs(flow_log_group),
                    traffic_type=ec2.FlowLogTrafficType.ALL,
                )
            },
            restrict_default_security_group=True,
        )
        self.subnets = self.vpc.select_subnets(subnet_type=ec2.SubnetType.PRIVATE_ISOLATED)
        for subnet in self.subnets.subnets:
            acknowledge(
                subnet,
                "CloudFormation-Validate::W3010",
                "Zones are explicit in cdk.json (checked against the region) so synth never needs AWS "
                "credentials for an availability-zone lookup.",
            )

        self.workload_security_group = ec2.SecurityGroup(
            self,
            "WorkloadSecurityGroup",
            vpc=self.vpc,
            description="Studio apps, training jobs and endpoints of loraops",
            allow_all_outbound=False,
        )
        # Between its own members, all traffic: Studio's EFS (NFS 2049), multi-node torch_distributed (7777 and
        # NCCL's ports) and EFA, which needs every protocol between the nodes of a job.
        self.workload_security_group.add_ingress_rule(
            self.workload_security_group, ec2.Port.all_traffic(), "Studio EFS, distributed training, EFA"
        )
        self.workload_security_group.add_egress_rule(
            self.workload_security_group, ec2.Port.all_traffic(), "Studio EFS, distributed training, EFA"
        )
        # The VPC has no internet route: 443 reaches only the interface endpoints and the S3 gateway.
        self.workload_security_group.add_egress_rule(ec2.Peer.any_ipv4(), HTTPS, "AWS APIs through VPC endpoints")

        endpoint_security_group = ec2.SecurityGroup(
            self,
            "EndpointSecurityGroup",
            vpc=self.vpc,
            description="Interface VPC endpoints of loraops",
            allow_all_outbound=False,
        )
        endpoint_security_group.add_ingress_rule(ec2.Peer.ipv4(props.vpc_cidr), HTTPS, "HTTPS from the VPC")

        for name, service in INTERFACE_ENDPOINTS.items():
            endpoint = self.vpc.add_interface_endpoint(
                name,
                service=service,
                subnets=ec2.SubnetSelection(subnets=self.subnets.subnets),
                security_groups=[endpoint_security_group],
                private_dns_enabled=True,
                open=False,
            )
            if props.endpoint_policies and name in POLICY_ENDPOINTS:
                endpoint.add_to_policy(self._only_this_account("*", ["*"]))
        # the registration function's idempotency table
        self.dynamodb_endpoint = self.vpc.add_gateway_endpoint(
            "DynamoDb",
            service=ec2.GatewayVpcEndpointAwsService.DYNAMODB,
            subnets=[ec2.SubnetSelection(subnets=self.subnets.subnets)],
        )
        if props.endpoint_policies:
            self.dynamodb_endpoint.add_to_policy(
                self._only_this_account(
                    "dynamodb:*",
                    [self.format_arn(service="dynamodb", resource="table", resource_name=f"{props.prefix}-*")],
                )
            )
        self.s3_endpoint = self.vpc.add_gateway_endpoint(
            "S3",
            service=ec2.GatewayVpcEndpointAwsService.S3,
            subnets=[ec2.SubnetSelection(subnets=self.subnets.subnets)],
        )

        if props.endpoint_policies:
            self._limit_s3_endpoint(props)
        self._acknowledge_default_security_group_provider()

    def _only_this_account(self, actions: str | list[str], resources: list[str]) -> iam.PolicyStatement:
        return iam.PolicyStatement(
            principals=[iam.AnyPrincipal()],
            actions=[actions] if isinstance(actions, str) else actions,
            resources=resources,
            conditions={"StringEquals": {"aws:PrincipalAccount": self.account}},
        )

    def _limit_s3_endpoint(self, props: NetworkProps) -> None:
        """Through the VPC, S3 reaches the loraops buckets (with this account's credentials only) and the ECR
        layer bucket of the region (image pulls), nothing else."""
        buckets = [props.artifact_bucket_name]
        self.s3_endpoint.add_to_policy(
            self._only_this_account(
                "s3:*", [f"arn:{self.partition}:s3:::{b}{suffix}" for b in buckets for suffix in ("", "/*")]
            )
        )
        self.s3_endpoint.add_to_policy(
            iam.PolicyStatement(
                principals=[iam.AnyPrincipal()],
                actions=["s3:GetObject"],
                resources=[f"arn:{self.partition}:s3:::prod-{props.region}-starport-layer-bucket/*"],
            )
        )

    def _acknowledge_default_security_group_provider(self) -> None:
        """CDK's provider that strips the default security group's rules (restrict_default_security_group)."""
        provider = self.node.try_find_child("Custom::VpcRestrictDefaultSGCustomResourceProvider")
        if provider is not None:
            acknowledge_cdk_provider(provider, "restrict-default-security-group")

    @property
    def placement(self) -> Placement:
        return Placement(vpc=self.vpc, subnets=self.subnets.subnets, security_group=self.workload_security_group)

    @property
    def availability_zones(self) -> list[str]:
        """The configured zones: synth never asks AWS (no context lookup, no credentials)."""
        return self._zones
