"""deploy/: every Serve config, job config and KubeRay manifest parses and validates against the
schemas Ray itself uses (Serve's ServeDeploySchema) and against tightdistill's own config models."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from common.config import load_config
from student_trainer.config import load_run_config
from student_trainer.experiment import ExperimentConfig
from teacher_service.app import ServeFile, build_app
from teacher_service.spec import ServiceConfig

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
SERVE_CONFIGS = sorted([*DEPLOY.glob("teachers*.yaml"), *DEPLOY.glob("experiments/serve/*.yaml")])
RUN_CONFIGS = sorted(p for p in DEPLOY.glob("*.yaml") if not p.name.startswith("teachers"))
EXPERIMENTS = sorted(DEPLOY.glob("experiments/*.yaml"))


def check_serve_config(raw: dict) -> None:
    schema = ServeDeploySchema.model_validate(raw)  # Ray's own validation of `serve run/deploy` files
    apps = [a for a in schema.applications if a.import_path == "teacher_service.app:build_app"]
    assert apps, "no tightdistill application"
    for app in apps:
        config = ServiceConfig.model_validate(app.args)
        build_app(config)  # the deployment graph builds (no model is loaded until Serve starts replicas)


@pytest.mark.parametrize("path", SERVE_CONFIGS, ids=lambda p: p.name)
def test_serve_configs_validate(path):
    check_serve_config(yaml.safe_load(path.read_text()))


@pytest.mark.parametrize("path", RUN_CONFIGS, ids=lambda p: p.name)
def test_run_configs_validate(path):
    run = load_run_config(path)
    assert run.run_dir.is_absolute()  # also when output_dir is left to its default
    if run.teacher.serve_config is not None:
        assert (DEPLOY.parent / run.teacher.serve_config).is_file()


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.name)
def test_experiment_files_validate(path):
    """Every run an experiment file plans is a valid run config; its rows train for the same step
    budget on each dataset (unless the file compares budgets on purpose); its teacher app's serve config holds every teacher it names."""
    experiment = load_config(ExperimentConfig, path)
    runs = experiment.runs()
    assert runs
    for dataset in {d for _, d, _, _ in runs} if not experiment.compares_budgets else ():
        budgets = {(r.train.epochs, r.train.batch_size, r.train.max_steps) for _, d, _, r in runs if d == dataset}
        assert len(budgets) == 1, f"{dataset}: rows train for different step budgets {budgets}"
    for _, _, _, run in runs:
        if run.teacher.serve_config is not None:
            serve_file = ServeFile(DEPLOY.parent / run.teacher.serve_config)
            assert serve_file.app_name == run.teacher.app_name
            assert {m.name for m in run.teacher.members()} <= {t.name for t in serve_file.config.teachers}


def test_gpu_teachers_ask_for_gpus():
    raw = yaml.safe_load((DEPLOY / "teachers.gpu.yaml").read_text())
    for teacher in raw["applications"][0]["args"]["teachers"]:
        assert teacher["ray_actor_options"]["num_gpus"] >= 1 and teacher["device"].startswith("cuda")
        assert teacher["num_replicas"] == "auto" and teacher["autoscaling_config"]["max_replicas"] >= 1


def _pod_containers(group: dict) -> list[dict]:
    containers = group["template"]["spec"]["containers"]
    assert containers and all("image" in c and "name" in c for c in containers)
    return containers


def check_ray_cluster_spec(spec: dict) -> None:
    """The RayClusterSpec fields KubeRay requires (ray.io/v1 CRD)."""
    assert isinstance(spec["rayVersion"], str)
    head = spec["headGroupSpec"]
    assert isinstance(head["rayStartParams"], dict)
    _pod_containers(head)
    for group in spec.get("workerGroupSpecs", []):
        assert group["groupName"] and isinstance(group["rayStartParams"], dict)
        assert group.get("minReplicas", 0) <= group["replicas"] <= group.get("maxReplicas", group["replicas"])
        _pod_containers(group)


def test_rayservice_manifest():
    doc = yaml.safe_load((DEPLOY / "k8s" / "rayservice-teachers.yaml").read_text())
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayService" and doc["metadata"]["name"]
    check_serve_config(yaml.safe_load(doc["spec"]["serveConfigV2"]))
    check_ray_cluster_spec(doc["spec"]["rayClusterConfig"])
    gpu_groups = [g for g in doc["spec"]["rayClusterConfig"]["workerGroupSpecs"]
                  if any("nvidia.com/gpu" in c["resources"]["limits"] for c in _pod_containers(g))]
    assert gpu_groups, "teachers should have a GPU worker group of their own"


def test_rayjob_manifest():
    doc = yaml.safe_load((DEPLOY / "k8s" / "rayjob-distill.yaml").read_text())
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayJob"
    spec = doc["spec"]
    entry = spec["entrypoint"].split()
    assert entry[:3] == ["python", "-m", "student_trainer.run"]
    config = Path(entry[entry.index("--config") + 1])
    load_run_config(DEPLOY.parent / config)
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert set(runtime_env) <= {"working_dir", "pip", "env_vars", "py_modules", "excludes"}
    check_ray_cluster_spec(spec["rayClusterSpec"])
