"""Production serving: an HTTP server that batches concurrent requests onto the engines (see sdrt.serve.app).

APIs: sdrt's own (/v1/generate), the AUTOMATIC1111 web UI's (/sdapi/v1/...), OpenAI's images API
(/v1/images/generations), plus /health, /ready and /metrics. `sdrt serve` runs it on uvicorn;
sdrt.serve.ray_app deploys the same app on Ray Serve.
"""

from sdrt.serve.app import create_app
from sdrt.serve.batcher import Batcher
from sdrt.serve.config import ServeConfig

__all__ = ["Batcher", "ServeConfig", "create_app"]
