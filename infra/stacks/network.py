"""Network: an isolated VPC with flow logs and the endpoints Studio and SageMaker jobs need."""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_logs as logs
from constructs import Construct

from infra.config import EnvironmentConfig
from infra.nag import acknowledge
from infra.stacks.storage import removal_policy

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
}

HTTPS = ec2.Port.tcp(443)
# Studio's home directories live on EFS, mounted over NFS between the domain's apps.
NFS = ec2.Port.tcp(2049)


class NetworkStack(cdk.Stack):
    """VPC with isolated subnets only; AWS services are reached through VPC endpoints."""

    def __init__(self, scope: Construct, construct_id: str, *, config: EnvironmentConfig, **kwargs) -> None:
        self._zones = list(config.availability_zones)
        super().__init__(scope, construct_id, **kwargs)

        flow_log_group = logs.LogGroup(
            self,
            "FlowLogs",
            removal_policy=removal_policy(config),
        )
        # RetentionDays is a name-valued enum; the validated day count goes straight to the L1.
        flow_log_group.node.default_child.retention_in_days = config.log_retention_days
        self.vpc = ec2.Vpc(
            self,
            "Vpc",
            ip_addresses=ec2.IpAddresses.cidr(config.vpc_cidr),
            availability_zones=config.availability_zones,
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
            restrict_default_security_group=False,
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
        self.workload_security_group.add_ingress_rule(self.workload_security_group, NFS, "Studio EFS (NFS)")
        self.workload_security_group.add_egress_rule(self.workload_security_group, NFS, "Studio EFS (NFS)")
        self.workload_security_group.add_ingress_rule(
            self.workload_security_group, ec2.Port.tcp_range(8192, 65535), "Studio apps and distributed training"
        )
        self.workload_security_group.add_egress_rule(
            self.workload_security_group, ec2.Port.tcp_range(8192, 65535), "Studio apps and distributed training"
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
        endpoint_security_group.add_ingress_rule(ec2.Peer.ipv4(config.vpc_cidr), HTTPS, "HTTPS from the VPC")

        for name, service in INTERFACE_ENDPOINTS.items():
            self.vpc.add_interface_endpoint(
                name,
                service=service,
                subnets=ec2.SubnetSelection(subnets=self.subnets.subnets),
                security_groups=[endpoint_security_group],
                private_dns_enabled=True,
                open=False,
            )
        self.vpc.add_gateway_endpoint(
            "S3",
            service=ec2.GatewayVpcEndpointAwsService.S3,
            subnets=[ec2.SubnetSelection(subnets=self.subnets.subnets)],
        )

    @property
    def availability_zones(self) -> list[str]:
        """The configured zones: synth never asks AWS (no context lookup, no credentials)."""
        return self._zones
