"""Build and deploy the teacher Serve application.

``build_app`` is the Serve *application builder* named in ``deploy/teachers.yaml``
(``import_path: teacher_service.app:build_app``), so ``serve run deploy/teachers.yaml``,
``serve deploy`` and ``tightdistill serve`` all build the same app from the same ``args``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import ray
from ray import serve

from common.config import ConfigError, parse_config, read_yaml
from teacher_service.deployment import TeacherReplica
from teacher_service.http_api import TeacherAPI
from teacher_service.spec import APP_NAME, ServiceConfig

DEFAULT_HTTP = {"host": "127.0.0.1", "port": 8000}


def build_app(args: dict[str, Any]) -> serve.Application:
    """Serve application builder: one deployment per teacher plus the HTTP ingress."""
    config = args if isinstance(args, ServiceConfig) else parse_config(ServiceConfig, dict(args), source="teacher service args")
    limits = config.limits.model_dump()
    teachers = {
        spec.name: TeacherReplica.options(**spec.deployment_options()).bind(spec.model_dump(), limits)
        for spec in config.teachers
    }
    ingress_options: dict[str, Any] = {"ray_actor_options": {"num_cpus": 0}}
    token = os.environ.get(config.auth_token_env)
    if token:  # the ingress replica may run on another node: hand it the token explicitly
        ingress_options["ray_actor_options"]["runtime_env"] = {"env_vars": {config.auth_token_env: token}}
    return TeacherAPI.options(**ingress_options).bind(teachers, limits, config.auth_token_env, config.default_teacher)


class ServeFile:
    """A Serve config file (the format ``serve run`` reads) holding the tightdistill application."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.raw = read_yaml(self.path)
        apps = self.raw.get("applications") or []
        app = next((a for a in apps if a.get("import_path", "").endswith("teacher_service.app:build_app")), None)
        if app is None:
            raise ConfigError(f"{self.path}: no application with import_path teacher_service.app:build_app")
        self.app_name: str = app.get("name", APP_NAME)
        self.route_prefix: str = app.get("route_prefix", "/")
        self.config = parse_config(ServiceConfig, app.get("args") or {}, source=f"{self.path} (args)")
        self.http_options: dict[str, Any] = {**DEFAULT_HTTP, **(self.raw.get("http_options") or {})}


def deploy(config: ServiceConfig, app_name: str = APP_NAME, route_prefix: str | None = "/",
           http_options: dict[str, Any] | None = None, blocking: bool = False) -> serve.handle.DeploymentHandle:
    """Deploy (or update) the teacher app on the connected Ray cluster and wait until it is healthy."""
    if not ray.is_initialized():
        raise RuntimeError("connect to Ray first (ray.init)")
    serve.start(http_options=http_options or DEFAULT_HTTP, logging_config={"enable_access_log": False})
    return serve.run(build_app(config), name=app_name, route_prefix=route_prefix, blocking=blocking)
