"""Ray Serve on a real two-node Ray cluster on this machine: placement on both nodes, model multiplexing, a
replica killed under load, a rolling update of an artifact, and autoscaling from load.

The cluster is Ray's own multi-node test cluster (`ray.cluster_utils.Cluster`): two raylets, each a node with its
own resources, object store and worker processes, joined to one GCS, every address on 127.0.0.1. Each node has one
`sdrt_slot` resource and every model replica asks for one, so two replicas must land on the two nodes. Every wait
is bounded; every client has a timeout.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from sdrt.serve import ServeConfig
from tests.serve.conftest import free_port

ray = pytest.importorskip("ray", reason="Ray Serve is not installed (pip install 'sdrt[serve-ray]')")

pytestmark = pytest.mark.slow

SLOT = "sdrt_slot"  # one per node: at most one model replica each
SMALL = {"height": 64, "width": 64, "steps": 2}
CLIENT_TIMEOUT_S = 90  # no client may wait longer than this for its answer
# Ray's autoscaling metrics are pushed every 10 s by default: every second here, so a burst shows in seconds
RAY_ENV = {
    "RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "1",
    "RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "1",
    # Ray resolves 127.0.0.1 to the machine's outward address unless told this is a local-only machine (the
    # setting that keeps it from doing so is named for Windows and macOS); the nodes still join one cluster
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
}


@pytest.fixture(scope="module")
def cluster():
    from ray import serve
    from ray.cluster_utils import Cluster

    saved = {k: os.environ.get(k) for k in RAY_ENV}
    os.environ.update(RAY_ENV)  # for the node processes Ray starts
    constants = pytest.MonkeyPatch()  # and for this process, which read the setting when it imported Ray
    constants.setattr(ray._private.ray_constants, "ENABLE_RAY_CLUSTER", False)
    port = free_port()
    nodes = None
    try:
        nodes = Cluster(
            initialize_head=True,
            head_node_args={
                "num_cpus": 1, "resources": {SLOT: 1}, "node_ip_address": "127.0.0.1", "include_dashboard": False,
            },
        )  # fmt: skip
        worker = nodes.add_node(num_cpus=1, resources={SLOT: 1}, node_ip_address="127.0.0.1")
        nodes.wait_for_nodes(120)
        ray.init(address=nodes.address, log_to_driver=False)
        alive = [n for n in ray.nodes() if n["Alive"]]
        assert len(alive) == 2 and {n["NodeManagerAddress"] for n in alive} == {"127.0.0.1"}
        serve.start(http_options={"host": "127.0.0.1", "port": port, "location": "HeadOnly"})
        yield {
            "url": f"http://127.0.0.1:{port}",
            "worker_node": worker.node_id,
            "head_node": nodes.head_node.node_id,
            "worker_raylet": worker.all_processes["raylet"][0].process.pid,  # its workers are this one's children
        }
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
            if nodes is not None:
                nodes.shutdown()
            constants.undo()
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


@pytest.fixture(scope="module")
def versions(tmp_path_factory, artifact, sdxl_artifact) -> dict[str, Path]:
    """Model directories: v1 (sd15 and xl) and v2 (sd15 re-exported: here, another hash in its manifest)."""
    root = tmp_path_factory.mktemp("ray-models")
    for version in ("v1", "v2"):
        (root / version).mkdir()
        shutil.copytree(artifact, root / version / "sd15", ignore=shutil.ignore_patterns("engines"))
        (root / version / "xl").symlink_to(sdxl_artifact, target_is_directory=True)
    manifest = root / "v2" / "sd15" / "manifest.json"
    data = json.loads(manifest.read_text())
    data["source_sha256"] = "2" * 64
    manifest.write_text(json.dumps(data))
    return {v: root / v for v in ("v1", "v2")}


def _deploy(models_dir: Path, **options) -> None:
    from ray import serve

    from sdrt.serve.ray_app import RayOptions, deployment

    ray_options = RayOptions(num_cpus=0, resources={SLOT: 1}, **options)
    app = deployment(models_dir=models_dir, config=ServeConfig(max_wait_ms=20), options=ray_options, max_loaded=1)
    serve.run(app, name="sdrt", route_prefix="/")


def _running_replicas() -> int:
    from ray import serve

    status = serve.status().applications["sdrt"].deployments["sdrt-models"]
    return status.replica_states.get("RUNNING", 0)


def _wait_for(what: str, check, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, f"{what} did not happen in {seconds} s"
        time.sleep(0.5)


def _post(url: str, body: dict) -> httpx.Response:
    return httpx.post(f"{url}/v1/generate", json=body, timeout=CLIENT_TIMEOUT_S)


def test_replicas_on_both_nodes_serve_the_models_they_hold(cluster, versions):
    url = cluster["url"]
    _deploy(versions["v1"], replicas=2)
    _wait_for("two running replicas", lambda: _running_replicas() == 2, 120)
    assert httpx.get(f"{url}/ready", timeout=60).json()["status"] == "ready"
    # the first request of each model loads it where Ray Serve sends it: the replica with fewest models
    first = {m: _post(url, {"prompt": "a pier", "model": m, **SMALL}) for m in ("sd15", "xl")}
    assert all(r.status_code == 200 for r in first.values()), [r.text for r in first.values()]
    holder = {m: r.headers["x-sdrt-replica"] for m, r in first.items()}
    assert holder["sd15"] != holder["xl"]
    bodies = [{"prompt": f"a pier {i}", "seed": i, "model": m, **SMALL} for i in range(4) for m in ("sd15", "xl")]
    with ThreadPoolExecutor(len(bodies)) as pool:
        answers = list(pool.map(lambda b: _post(url, b), bodies))
    assert [a.status_code for a in answers] == [200] * len(bodies)
    nodes = {a.headers["x-sdrt-node"] for a in answers}
    assert nodes == {cluster["head_node"], cluster["worker_node"]}  # both nodes answered
    for body, answer in zip(bodies, answers, strict=True):
        assert answer.json()["model"] == body["model"]
        # multiplexing: each request went to the replica that already held its model; none loaded a second one
        assert answer.headers["x-sdrt-replica"] == holder[body["model"]]
        assert answer.headers["x-sdrt-loaded"] == body["model"]
    # the web UI API and the errors come through the router as they are
    web_ui = httpx.post(f"{url}/sdapi/v1/txt2img", json={"prompt": "x", "seed": 11, **SMALL}, timeout=60)
    assert json.loads(web_ui.json()["info"])["all_seeds"] == [11]
    bad = httpx.post(f"{url}/v1/generate", json={"prompt": "x", **SMALL, "height": 65}, timeout=60)
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "height"]
    unknown = httpx.post(f"{url}/v1/generate", json={"prompt": "x", "model": "sd-v1-5"}, timeout=60)
    assert unknown.status_code == 422 and "it has 'sd15 [" in unknown.text


def _replica_processes(raylet: int) -> list[int]:
    """PIDs of the model replicas a node's raylet started (Ray names an actor's process after it)."""
    import psutil

    return [
        p.pid for p in psutil.Process(raylet).children()
        if "ServeReplica:sdrt:sdrt-models" in " ".join(p.cmdline())
    ]  # fmt: skip


def test_a_replica_killed_under_load_answers_503_and_is_replaced(cluster, versions):
    url = cluster["url"]
    _wait_for("two running replicas", lambda: _running_replicas() == 2, 120)
    victims = _replica_processes(cluster["worker_raylet"])
    assert len(victims) == 1
    # long requests (seconds each), so that the kill lands while the worker node's replica runs some; two per model,
    # one batch on each replica (the artifacts' max batch), so the survivor's finish well inside the clients' bound
    # even on a loaded machine
    slow = {"height": 256, "width": 256, "steps": 60}
    bodies = [{"prompt": f"a storm {i}", "seed": i, "model": m, **slow} for i in range(2) for m in ("sd15", "xl")]
    results: list[tuple[int, str | None, float]] = []

    def client(body: dict) -> None:
        start = time.monotonic()
        try:
            response = _post(url, body)
            results.append((response.status_code, response.headers.get("retry-after"), time.monotonic() - start))
        except httpx.HTTPError as exc:  # a hang shows as a timeout here
            results.append((0, type(exc).__name__, time.monotonic() - start))

    threads = [threading.Thread(target=client, args=(b,)) for b in bodies]
    for thread in threads:
        thread.start()
    time.sleep(3)  # the requests are admitted and running on both replicas
    os.kill(victims[0], signal.SIGKILL)
    for thread in threads:
        thread.join(CLIENT_TIMEOUT_S + 10)
    counts = Counter(status for status, _, _ in results)
    print(f"replica killed under {len(bodies)} requests: {dict(counts)}")
    assert len(results) == len(bodies) and set(counts) <= {200, 503}, results
    assert counts[503] >= 1  # the killed replica's requests
    assert all(retry == "5" for status, retry, _ in results if status == 503)
    assert max(seconds for _, _, seconds in results) < CLIENT_TIMEOUT_S
    _wait_for("the killed replica replaced", lambda: _running_replicas() == 2, 120)
    later = [_post(url, {"prompt": "after", "model": m, **SMALL}) for m in ("sd15", "xl", "sd15")]
    assert [r.status_code for r in later] == [200] * 3


def test_a_rolling_update_fails_no_request(cluster, versions):
    url = cluster["url"]
    statuses: list[tuple[int, str]] = []
    stop = threading.Event()

    def client(i: int) -> None:
        with httpx.Client(timeout=CLIENT_TIMEOUT_S) as http:
            while not stop.is_set():
                response = http.post(f"{url}/v1/generate", json={"prompt": f"a mill {i}", "model": "sd15", **SMALL})
                parameters = response.json()["images"][0]["parameters"] if response.status_code == 200 else ""
                statuses.append((response.status_code, parameters))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    _wait_for("requests before the update", lambda: len(statuses) >= 3, 60)
    _deploy(versions["v2"], replicas=2)  # returns once the new version runs everywhere
    after = len(statuses)
    _wait_for("requests after the update", lambda: len(statuses) >= after + 3, 60)
    stop.set()
    for thread in threads:
        thread.join(CLIENT_TIMEOUT_S)
    print(f"rolling update under load: {len(statuses)} requests, {Counter(s for s, _ in statuses)}")
    assert [s for s, _ in statuses] == [200] * len(statuses)
    assert "Model hash: 2222222222" not in statuses[0][1]
    assert all("Model hash: 2222222222" in p for _, p in statuses[after + 1 :])


def test_autoscaling_adds_replicas_under_a_burst_and_removes_them_when_idle(cluster, versions):
    url = cluster["url"]
    _deploy(
        versions["v2"], min_replicas=1, max_replicas=2, target_ongoing_requests=1, upscale_delay_s=0,
        downscale_delay_s=2, look_back_period_s=2,
    )  # fmt: skip
    _wait_for("one replica when idle", lambda: _running_replicas() == 1, 120)
    seen = [1]
    answered: list[tuple[int, str | None]] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            seen.append(_running_replicas())
            time.sleep(0.5)

    def client(i: int) -> None:  # a sustained burst over both models, until the added replica has answered
        with httpx.Client(timeout=CLIENT_TIMEOUT_S) as http:
            n = 0
            while not stop.is_set():
                body = {"prompt": f"a crowd {i}", "seed": n, "model": ("sd15", "xl")[(i + n) % 2], **SMALL}
                response = http.post(f"{url}/v1/generate", json=body)
                answered.append((response.status_code, response.headers.get("x-sdrt-replica")))
                n += 1

    watcher = threading.Thread(target=watch)
    clients = [threading.Thread(target=client, args=(i,)) for i in range(6)]
    for thread in (watcher, *clients):
        thread.start()
    try:
        # bounded: the autoscaler sees the load within seconds (metrics pushed every second); a replica starts in tens
        _wait_for("an added replica answering", lambda: len({r for s, r in answered if s == 200}) >= 2, 180)
    finally:
        stop.set()
        for thread in clients:
            thread.join(CLIENT_TIMEOUT_S + 10)
        watcher.join()
    print(f"autoscaling burst: {len(answered)} requests, {Counter(s for s, _ in answered)}, replicas seen {max(seen)}")
    assert [s for s, _ in answered] == [200] * len(answered)
    assert 1 <= min(seen) and max(seen) <= 2  # within min_replicas..max_replicas
    _wait_for("back to one replica when idle", lambda: _running_replicas() == 1, 90)
