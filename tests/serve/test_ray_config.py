"""The Serve config file and the KubeRay RayService in docs/: valid for Ray's own schema and sdrt's builder."""

from __future__ import annotations

from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="Ray Serve is not installed (pip install 'sdrt[serve-ray]')")
yaml = pytest.importorskip("yaml", reason="PyYAML (a dependency of Ray) is not installed")

DOCS = Path(__file__).resolve().parents[2] / "docs"


def _check_serve_config(config: dict, model_dir: Path) -> None:
    """Ray's schema accepts it, no key is one Ray would ignore, and sdrt builds the application it describes."""
    from ray.serve.schema import DeploymentSchema, ServeApplicationSchema, ServeDeploySchema

    from sdrt.serve.ray_app import MODELS, ROUTER, AppArgs, app_builder

    ServeDeploySchema.model_validate(config)
    # Ray's schema lets unknown keys through (for forward compatibility): a misspelt one would be ignored
    assert set(config) <= set(ServeDeploySchema.model_fields)
    for app in config["applications"]:
        assert set(app) <= set(ServeApplicationSchema.model_fields)
        assert app["import_path"] == "sdrt.serve.ray_app:app_builder"
        for override in app.get("deployments", []):
            assert override["name"] in (MODELS, ROUTER)
            assert set(override) <= set(DeploymentSchema.model_fields)
        args = AppArgs(**app["args"])  # sdrt's arguments refuse unknown keys
        assert args.model_dir is not None
        # the application it describes, on this machine's CPU and the test's models
        local = {**app["args"], "model_dir": str(model_dir), "backend": "onnxruntime", "device": "cpu", "num_gpus": 0}
        built = app_builder(AppArgs(**local))
        assert type(built).__name__ == "Application"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, artifact) -> Path:
    root = tmp_path_factory.mktemp("config-models")
    (root / "sd15").symlink_to(artifact, target_is_directory=True)
    return root


def test_the_serve_config_file_is_valid(model_dir):
    _check_serve_config(yaml.safe_load((DOCS / "ray-serve-config.yaml").read_text()), model_dir)


def test_the_kuberay_service_runs_that_config_with_gpus_and_probes(model_dir):
    service = yaml.safe_load((DOCS / "kuberay-rayservice.yaml").read_text())
    assert service["apiVersion"] == "ray.io/v1" and service["kind"] == "RayService"
    _check_serve_config(yaml.safe_load(service["spec"]["serveConfigV2"]), model_dir)
    cluster = service["spec"]["rayClusterConfig"]
    assert cluster["rayVersion"] == ray.__version__
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    for group in groups:
        for container in group["template"]["spec"]["containers"]:
            assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": 8000}
            assert container["livenessProbe"]["httpGet"] == {"path": "/health", "port": 8000}
    for group in cluster["workerGroupSpecs"]:
        (container,) = group["template"]["spec"]["containers"]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    args = yaml.safe_load(service["spec"]["serveConfigV2"])["applications"][0]["args"]
    assert args["num_gpus"] == 1 and args["device"] == "cuda"
