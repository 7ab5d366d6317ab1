"""Registry: model package groups for the base model and each fine-tuned line, their Model Registry collections,
and the approver role of manual-approval environments."""

from __future__ import annotations

from dataclasses import dataclass

import aws_cdk as cdk
from aws_cdk import aws_iam as iam
from aws_cdk import aws_resourcegroups as resourcegroups
from aws_cdk import aws_sagemaker as sagemaker
from constructs import Construct

from infra import promotion
from infra.config_sections import FineTunedLine
from infra.nag import acknowledge_wildcards
from infra.props import EnvironmentBasics, PromotionProps, removal_policy
from loraops.collections import Collection, Hierarchy
from loraops.naming import TAG_APPROVAL_POLICY, ApprovalPolicy, base_group_tags, finetuned_group_tags

#: Why each statement of the approver's policy that holds a wildcard needs it.
APPROVER_WILDCARD_REASONS = {
    "ApproveOrRejectPackages": "Package versions are created at run time; the approver may update only the "
    "packages of this environment's groups.",
}


def _tags(tags: dict[str, str]) -> list[cdk.CfnTag]:
    return [cdk.CfnTag(key=k, value=v) for k, v in sorted(tags.items())]


@dataclass(frozen=True, kw_only=True)
class RegistryProps(EnvironmentBasics):
    """The base model and fine-tuned lines (one package group each), approval and approvers, promotion grants."""

    base_model_id: str
    base_group: str
    fine_tuned_lines: tuple[FineTunedLine, ...]
    approval: ApprovalPolicy
    approvers: tuple[str, ...]
    artifact_bucket_name: str
    promotion: PromotionProps


class RegistryStack(cdk.Stack):
    """One package group per base model (``<org>--<model>``) and per fine-tuned line, in collections
    ``<base>`` → ``<base>-adapters`` / ``<base>-merged``."""

    def __init__(self, scope: Construct, construct_id: str, *, props: RegistryProps, **kwargs) -> None:
        super().__init__(scope, construct_id, **kwargs)
        approval = {TAG_APPROVAL_POLICY: props.approval}
        self.hierarchy = Hierarchy.for_base(props.base_group)
        self.collections = {c.name: self._collection(c, props) for c in self.hierarchy.all}

        # Names and descriptions are create-only: descriptions say only what the name already says.
        self.base_group = self._group(
            "BaseModelGroup",
            props,
            name=props.base_group,
            description=f"Base model {props.base_model_id}",
            tags={**base_group_tags(), **approval, **self.hierarchy.root.member_tag()},
        )
        self.fine_tuned_groups: dict[str, sagemaker.CfnModelPackageGroup] = {}
        for line in props.fine_tuned_lines:
            name = line.group_name(props.base_model_id)
            what = f"on {line.dataset}" if line.task is None else f"for {line.task}"
            self.fine_tuned_groups[name] = self._group(
                f"Group-{name}",
                props,
                name=name,
                description=f"{line.mode.value} fine-tunes of {props.base_model_id} {what}",
                tags={
                    **finetuned_group_tags(props.base_model_id, line.mode, line.dataset),
                    **approval,
                    **self.hierarchy.collection_for(line.mode).member_tag(),
                },
            )
        self.approver_role = self._approver_role(props) if props.approvers else None
        cdk.CfnOutput(self, "BaseModelGroupName", value=props.base_group)

    def _group(
        self, construct_id: str, props: RegistryProps, *, name: str, description: str, tags: dict[str, str]
    ) -> sagemaker.CfnModelPackageGroup:
        group = sagemaker.CfnModelPackageGroup(
            self,
            construct_id,
            model_package_group_name=name,
            model_package_group_description=description,
            model_package_group_policy=promotion.group_policy(self, props.promotion, name),
            tags=_tags(tags),
        )
        group.apply_removal_policy(removal_policy(props))
        return group

    def _collection(self, collection: Collection, props: RegistryProps) -> resourcegroups.CfnGroup:
        query = collection.query()
        group = resourcegroups.CfnGroup(
            self,
            f"Collection-{collection.name}",
            name=collection.name,
            description=f"Model Registry collection {collection.name}",
            resource_query=resourcegroups.CfnGroup.ResourceQueryProperty(
                type="TAG_FILTERS_1_0",
                query=resourcegroups.CfnGroup.QueryProperty(
                    resource_type_filters=query["ResourceTypeFilters"],
                    tag_filters=[
                        resourcegroups.CfnGroup.TagFilterProperty(key=f["Key"], values=f["Values"])
                        for f in query["TagFilters"]
                    ],
                ),
            ),
            tags=_tags(collection.group_tags()),
        )
        group.apply_removal_policy(removal_policy(props))
        return group

    def _approver_role(self, props: RegistryProps) -> iam.Role:
        """The one role that may approve or reject packages of this environment's groups."""
        groups = [props.base_group, *(line.group_name(props.base_model_id) for line in props.fine_tuned_lines)]
        role = iam.Role(
            self,
            "ApproverRole",
            role_name=f"{props.prefix}-model-approver",
            assumed_by=iam.CompositePrincipal(*(iam.ArnPrincipal(arn) for arn in props.approvers)),
            description=f"loraops {props.name}: approves or rejects model packages",
        )
        packages = [
            self.format_arn(service="sagemaker", resource="model-package", resource_name=f"{g}/*") for g in groups
        ]
        statement = iam.PolicyStatement(
            sid="ApproveOrRejectPackages",
            actions=["sagemaker:UpdateModelPackage", "sagemaker:DescribeModelPackage"],
            resources=packages,
        )
        listing = iam.PolicyStatement(
            sid="ListPackagesOfTheGroups",
            # the groups' tags say which environment a package belongs to (checked before every decision)
            actions=["sagemaker:ListModelPackages", "sagemaker:DescribeModelPackageGroup", "sagemaker:ListTags"],
            resources=[
                self.format_arn(service="sagemaker", resource="model-package-group", resource_name=g) for g in groups
            ],
        )
        bucket_environment = iam.PolicyStatement(
            sid="ReadTheBucketsEnvironment",
            actions=["s3:GetBucketTagging"],
            resources=[f"arn:{self.partition}:s3:::{props.artifact_bucket_name}"],
        )
        statements = [statement, listing, bucket_environment]
        policy = iam.Policy(self, "ApproverPolicy", statements=statements)
        policy.attach_to_role(role)
        acknowledge_wildcards(policy, statements, APPROVER_WILDCARD_REASONS)
        return role
