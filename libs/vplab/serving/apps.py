"""The one source of truth for the Ray Serve applications.

The local stack (``vplab up``) and the Helm chart's ``serveConfigV2`` are both generated
from ``APPS`` (see ``serve_config``), so an app name, import path, port or servicer function
can only be changed here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vplab.settings import Settings

GRPC_PORT = 9000  # Serve's gRPC proxy: every app behind one port, routed by "application" metadata
HTTP_PORT = 8000  # Serve's HTTP proxy: only /-/healthz is used (KubeRay probes it)
GATEWAY_PORT = 8080  # the REST gateway (its own process / Deployment)
# The gateway's app factory, for uvicorn (``vplab gateway``) and the chart's command. The
# library names service modules only here, as import strings: it never imports them.
GATEWAY_FACTORY = "services.gateway.main:create_app"


@dataclass(frozen=True)
class ServeApp:
    name: str  # the Serve application name = gRPC "application" metadata value
    import_path: str  # module:attribute of the bound Serve application
    servicer: str  # grpc "add_XServicer_to_server" function for the proxy
    deployment: str  # the ingress deployment's class name (for per-deployment config)
    role: str  # "inference" | "training": which worker group runs it
    default_num_gpus: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)
    more_servicers: tuple[str, ...] = ()  # other gRPC services the same app serves

    @property
    def route_prefix(self) -> str:
        # Serve's gRPC proxy needs a route prefix even though gRPC routes by metadata.
        return f"/{self.name}"


APPS: tuple[ServeApp, ...] = (
    ServeApp(
        name="features",
        import_path="services.features.app:app",
        servicer="vplab.rpc.v1.features_pb2_grpc.add_FeaturesServicer_to_server",
        deployment="FeaturesDeployment",
        role="inference",
    ),
    ServeApp(
        name="segmentation",
        import_path="services.segmentation.app:app",
        servicer="vplab.rpc.v1.segmentation_pb2_grpc.add_SegmentationServicer_to_server",
        deployment="SegmentationDeployment",
        role="inference",
    ),
    ServeApp(
        name="training",
        import_path="services.training.app:app",
        servicer="vplab.rpc.v1.training_pb2_grpc.add_TrainingServicer_to_server",
        deployment="TrainingDeployment",
        role="training",
        # The same app serves prediction runs and data jobs (durable jobs too).
        more_servicers=(
            "vplab.rpc.v1.predictions_pb2_grpc.add_PredictionsServicer_to_server",
            "vplab.rpc.v1.datajobs_pb2_grpc.add_DataJobsServicer_to_server",
        ),
    ),
)


def servicer_functions() -> list[str]:
    return [s for a in APPS for s in (a.servicer, *a.more_servicers)]


# Ray resources a pinned replica or task asks for: a sliver of its role's custom resource,
# which only the nodes of that role's worker group advertise (the chart gives them 1000).
ROLE_RESOURCE_SLIVER = 0.001
# Set in every app's runtime_env when the chart pins roles, so that the training replica's
# tasks ask for ``vplab_training`` too (Settings.ray_pin_roles).
PIN_ROLES_ENV = "VPLAB_RAY_PIN_ROLES"


def role_resource(role: str) -> str:
    """The custom Ray resource a worker group of ``role`` advertises (chart: vplab.roleResource)."""
    return f"vplab_{role}"


def role_resources(role: str, pinned: bool) -> dict[str, float]:
    """``resources`` for a replica or task of ``role``: empty unless pinned to its group."""
    return {role_resource(role): ROLE_RESOURCE_SLIVER} if pinned else {}


def app_role(app_name: str) -> str:
    return next(a.role for a in APPS if a.name == app_name)


def deployment_options(settings: Settings, app_name: str) -> dict[str, Any]:
    """Serve options of an app's deployment, from the settings (read where the replica's
    module is imported). A Serve config document (the chart's serveConfigV2) overrides them."""
    options: dict[str, Any] = {
        "max_ongoing_requests": settings.serve_max_ongoing_requests,
        "max_queued_requests": settings.serve_max_queued_requests,
    }
    resources = role_resources(app_role(app_name), settings.ray_pin_roles)
    if resources:
        options["ray_actor_options"] = {"resources": resources}
    autoscaling = getattr(settings, f"{app_name}_autoscaling", None)
    if autoscaling:
        options["autoscaling_config"] = dict(autoscaling)
    return options


def default_admission() -> dict[str, int]:
    """Serve's admission limits per replica, the settings' defaults (BENCHMARKS.md section 8:
    Serve's own default of 5 ongoing requests collapsed throughput under load)."""
    from vplab.settings import Settings  # pydantic only: the gateway imports this module too

    fields = Settings.model_fields
    return {
        "max_ongoing_requests": int(fields["serve_max_ongoing_requests"].default),
        "max_queued_requests": int(fields["serve_max_queued_requests"].default),
    }


def serve_config(
    num_gpus: dict[str, float] | None = None,
    autoscaling: dict[str, dict[str, Any]] | None = None,
    env: dict[str, str] | None = None,
    admission: dict[str, dict[str, int]] | None = None,
    pin_roles: bool = False,
) -> dict[str, Any]:
    """A Serve config document (the shape of ``serveConfigV2`` / ``serve deploy``).

    ``num_gpus``, ``autoscaling`` and ``admission`` (``max_ongoing_requests`` /
    ``max_queued_requests`` overrides) are per app name; ``env`` goes into every app's
    runtime_env (e.g. VPLAB_* settings). A config document overrides what a replica's
    module would set, so the admission limits must be in it. ``pin_roles``: replicas ask
    for their role's resource and the apps' training tasks do too (``PIN_ROLES_ENV``).
    """
    num_gpus = num_gpus or {}
    autoscaling = autoscaling or {}
    admission = admission or {}
    if pin_roles:
        env = {**(env or {}), PIN_ROLES_ENV: "true"}
    apps = []
    for app in APPS:
        actor: dict[str, Any] = {"num_gpus": num_gpus.get(app.name, app.default_num_gpus)}
        if pin_roles:
            actor["resources"] = role_resources(app.role, pinned=True)
        deployment: dict[str, Any] = {
            "name": app.deployment,
            "ray_actor_options": actor,
            **default_admission(),
            **admission.get(app.name, {}),
        }
        if app.name in autoscaling:
            deployment["autoscaling_config"] = autoscaling[app.name]
        else:
            deployment["num_replicas"] = 1
        entry: dict[str, Any] = {
            "name": app.name,
            "route_prefix": app.route_prefix,
            "import_path": app.import_path,
            "deployments": [deployment],
        }
        if env:
            entry["runtime_env"] = {"env_vars": dict(env)}
        apps.append(entry)
    return {
        "proxy_location": "EveryNode",
        "http_options": {"host": "0.0.0.0", "port": HTTP_PORT},
        "grpc_options": {"port": GRPC_PORT, "grpc_servicer_functions": servicer_functions()},
        "applications": apps,
    }
