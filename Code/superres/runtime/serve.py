"""python -m superres serve: start the web app (Code/Web_App) with uvicorn.

    python -m superres serve                     # http://0.0.0.0:5000 (HOST / PORT from the environment)
    MODEL_DIR=runs/export python -m superres serve --port 8000

The models are fetched (MODEL_URL) and loaded before the server starts listening, so a missing or damaged
model stops it at once with a plain message instead of a server that answers errors.

The job store is chosen here, once: with REDIS_URL set, jobs go on Redis (superres.runtime.redis_jobs.RedisJobs) and
`python -m superres worker` processes run them, so several web processes behind a load balancer share them; a Redis
that cannot be reached at start stops the server with one line (exit 2). Without it, the web app runs jobs on its
own threads (superres.runtime.jobs.Jobs), as a single process needs nothing else.

How the two halves meet: the web app (Code/Web_App: app.py, templates, static files) is not part of the
installed package, so it cannot be imported by name. `load_webapp` loads Web_App/app.py by its path, as the
module `superres_webapp`, from beside the package (Code/Web_App in a checkout, /app/Code/Web_App in the Docker
image) or from SUPERRES_WEBAPP_DIR. It uses three names of it: `Settings`, `load_models` and `create_app`.
The other way, app.py imports only the package's public modules (inference, imaging, jobs, model_folder,
upload), never `serve`; test_serve.py checks both.
"""
from __future__ import annotations

import asyncio
import importlib.util
import os
import sys
from pathlib import Path

WEBAPP_MODULE = "superres_webapp"


def webapp_dir() -> Path:
    return Path(os.environ.get("SUPERRES_WEBAPP_DIR") or Path(__file__).resolve().parents[2] / "Web_App")


def load_webapp():
    """Import Web_App/app.py as the module `superres_webapp` (it is not part of the installed package)."""
    if WEBAPP_MODULE in sys.modules:
        return sys.modules[WEBAPP_MODULE]
    path = webapp_dir() / "app.py"
    if not path.is_file():
        raise FileNotFoundError(
            f"The web app is not at {path}. `serve` runs from a checkout of the repository (Code/Web_App "
            "beside Code/superres) or from the Docker image; set SUPERRES_WEBAPP_DIR to its folder otherwise.")
    spec = importlib.util.spec_from_file_location(WEBAPP_MODULE, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[WEBAPP_MODULE] = module
    spec.loader.exec_module(module)
    return module


def load_settings(args):
    """What `serve` and `worker` start from: logging at --log-level, the web app (`load_webapp`) and its `Settings`
    from the environment, with --model-dir over MODEL_DIR. None, the reason printed, where the web app is missing
    or a setting is wrong."""
    import logging
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s:     %(message)s")
    try:
        webapp = load_webapp()
        settings = webapp.Settings.from_env()
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return None
    if args.model_dir:
        settings.model_dir = Path(args.model_dir)
    return webapp, settings


def add_arguments(p):
    p.add_argument("--host", default=os.environ.get("HOST") or "0.0.0.0", help="address (default: $HOST or 0.0.0.0)")
    p.add_argument("--port", type=int, default=int(os.environ.get("PORT") or 5000),
                   help="port (default: $PORT or 5000)")
    p.add_argument("--model-dir", default=None, help="model folder (default: $MODEL_DIR or the shipped models)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])


def run(args) -> int:
    import uvicorn

    from superres.runtime.inference import ModelError
    from superres.runtime.jobs import Unavailable
    loaded = load_settings(args)
    if loaded is None:
        return 2
    webapp, settings = loaded
    conn = None
    if settings.redis_url:
        from superres.runtime import redis_jobs
        try:
            conn = redis_jobs.connect(settings.redis_url)
        except Unavailable as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    try:
        enhancer = asyncio.run(webapp.load_models(settings))
    except ModelError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    jobs, where = None, f"{settings.workers} worker(s)"
    if conn is not None:
        s = settings
        jobs = redis_jobs.RedisJobs(conn, queue=s.queue, tile=s.tile, max_input_pixels=int(s.max_input_mp * 1e6),
                                    timeout_s=s.job_timeout_s, ttl_s=s.job_ttl_s,
                                    max_results_bytes=int(s.max_results_mb * 1024 * 1024),
                                    heartbeat_s=s.worker_heartbeat_s)
        where = f"jobs on Redis at {redis_jobs.safe_url(s.redis_url)}"
    app = webapp.create_app(settings, enhancer, jobs)
    print(f"serving the super-resolution app on http://{args.host}:{args.port}/ "
          f"(models: {enhancer.model_dir}, {where}, queue {settings.queue})", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, timeout_graceful_shutdown=5,
                **settings.uvicorn())
    return 0
