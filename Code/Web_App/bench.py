"""Performance figures for the web app (printed, not asserted):

  * x4 latency of a 512x512 upload, end to end over HTTP (median of --repeat runs, one request at a time);
  * peak memory (VmHWM of the server process) and wall time while --requests large requests run at once,
    with the /healthz latency seen meanwhile;
  * optionally (--big) peak RSS of x4 on a 2000x2000 photo in a fresh process (Enhancer directly);
  * the Docker image size, if a `srwebapp` image exists.

    .venv/bin/python Code/Web_App/bench.py --model-dir Code/superres/default_model
    .venv/bin/python Code/Web_App/bench.py --untrained --big      # random weights (needs torch to export)

It starts `python -m superres serve` on a free port itself. Timings depend on what else runs on the machine.
"""
from __future__ import annotations

import argparse
import asyncio
import io
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import httpx
from PIL import Image

REPO = Path(__file__).resolve().parents[2]


def portrait(size: int) -> bytes:
    try:
        from skimage import data
        img = Image.fromarray(data.astronaut())
    except ImportError:
        img = Image.effect_mandelbrot((512, 512), (-2, -1.5, 1, 1.5), 100).convert("RGB")
    buf = io.BytesIO()
    img.resize((size, size), Image.Resampling.LANCZOS).save(buf, "PNG")
    return buf.getvalue()


def vm_hwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def start_server(model_dir: str, workers: int, queue: int):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "MODEL_DIR": model_dir, "WORKERS": str(workers), "QUEUE": str(queue)}
    proc = subprocess.Popen([sys.executable, "-m", "superres", "serve", "--host", "127.0.0.1", "--port", str(port),
                             "--log-level", "warning"], env=env, cwd=REPO)
    base = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            sys.exit(f"the server exited with code {proc.returncode}")
        time.sleep(0.2)
    proc.kill()
    sys.exit("the server did not start")


def latency(base: str, data: bytes, scale: int, repeat: int) -> list[float]:
    times = []
    with httpx.Client(timeout=900) as client:
        for _ in range(repeat):
            t = time.perf_counter()
            r = client.post(base + "/api/enhance", files={"file": ("p.png", data, "image/png")},
                            data={"scale": str(scale)})
            r.raise_for_status()
            times.append(time.perf_counter() - t)
    return times


async def load(base: str, data: bytes, scale: int, n: int):
    health = []
    async with httpx.AsyncClient(timeout=1800) as client:
        async def one():
            r = await client.post(base + "/api/enhance", files={"file": ("p.png", data, "image/png")},
                                  data={"scale": str(scale)})
            return r.status_code

        async def poll(done):
            while not done.is_set():
                t = time.perf_counter()
                await client.get(base + "/healthz")
                health.append(time.perf_counter() - t)
                await asyncio.sleep(0.5)
        done = asyncio.Event()
        poller = asyncio.create_task(poll(done))
        t = time.perf_counter()
        codes = await asyncio.gather(*[one() for _ in range(n)])
        wall = time.perf_counter() - t
        done.set()
        await poller
    return codes, wall, health


def big_rss(model_dir: str) -> tuple[float, float]:
    script = textwrap.dedent(f"""
        import resource, time, numpy as np
        from PIL import Image
        from superres.runtime.inference import Enhancer
        from superres.runtime.imaging import encode_png
        from skimage import data
        img = Image.fromarray(data.astronaut()).resize((2000, 2000), Image.Resampling.LANCZOS)
        t = time.perf_counter()
        out = Enhancer({model_dir!r}).enhance(img, scale=4)
        png = encode_png(out)
        print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    """)
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    seconds, mb = map(float, res.stdout.split()[-2:])
    return seconds, mb


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-dir", default=os.environ.get("MODEL_DIR"),
                   help="model folder (default: $MODEL_DIR or the shipped one)")
    p.add_argument("--untrained", action="store_true",
                   help="export random-weight models to a temporary folder and use them")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--scale", type=int, default=4, choices=[2, 4])
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--requests", type=int, default=8)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--big", action="store_true", help="also measure x4 of 2000x2000 (minutes on 2 cores)")
    args = p.parse_args()

    model_dir = args.model_dir
    if args.untrained:
        from superres.training.export import export_untrained
        model_dir = tempfile.mkdtemp(prefix="untrained-")
        export_untrained(model_dir)
    if not model_dir:
        from superres import DEFAULT_MODEL_DIR
        model_dir = str(DEFAULT_MODEL_DIR)
    print(f"model: {model_dir}; machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")

    data = portrait(args.size)
    proc, base = start_server(model_dir, args.workers, max(16, args.requests))
    try:
        latency(base, portrait(64), 2, 1)                      # warm up (first session run)
        times = latency(base, data, args.scale, args.repeat)
        print(f"x{args.scale} of {args.size}x{args.size}, end to end over HTTP: "
              f"median {statistics.median(times):.2f} s (runs: {', '.join(f'{t:.2f}' for t in times)})")
        codes, wall, health = asyncio.run(load(base, data, args.scale, args.requests))
        print(f"{args.requests} concurrent x{args.scale} requests of {args.size}x{args.size} ({args.workers} worker): "
              f"statuses {sorted(set(codes))}, {wall:.1f} s in all; "
              f"/healthz max {max(health) * 1000:.0f} ms over {len(health)} polls")
        print(f"server peak memory (VmHWM) after the load: {vm_hwm_mb(proc.pid):.0f} MB")
    finally:
        proc.terminate()
        proc.wait(10)

    if args.big:
        seconds, mb = big_rss(model_dir)
        print(f"x4 of 2000x2000 (Enhancer + PNG encode, fresh process): {seconds:.0f} s, peak RSS {mb:.0f} MB")
    try:
        size = subprocess.run(["docker", "image", "inspect", "srwebapp", "--format", "{{.Size}}"],
                              capture_output=True, text=True, timeout=30)
        if size.returncode == 0:
            print(f"docker image srwebapp: {int(size.stdout) / 1e6:.0f} MB")
    except (OSError, subprocess.TimeoutExpired):
        pass


if __name__ == "__main__":
    main()
