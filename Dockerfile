# The web app, served with ONNX Runtime (no torch, no fastai):
#   docker build -t srwebapp . && docker run --rm -it -p 5000:5000 srwebapp    ->  http://localhost:5000/
# Settings are environment variables (see Code/Web_App/app.py: Settings), e.g.
#   docker run --rm -it -p 5000:5000 -v $PWD/my_model:/models:ro -e MODEL_DIR=/models srwebapp
#   docker run --rm -it -p 5000:5000 -e MODEL_URL=https://example.org/model.zip -e MODEL_SHA256=<its sha256> srwebapp
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
# The serving dependencies at the exact versions of requirements-serve.lock (pyproject.toml's base set, no extras:
# no torch, no fastai; regenerate command at its top), first, so this layer is rebuilt only when the lock changes.
# --no-deps: the lock is complete, nothing newer from the registry gets in.
COPY requirements-serve.lock ./
RUN python -m pip install --no-cache-dir --no-deps -r requirements-serve.lock
# The package (with the shipped models in superres/default_model), its dependencies already there, and the web app.
COPY pyproject.toml README.md ./
COPY Code/superres Code/superres
RUN python -m pip install --no-cache-dir --no-deps -e .
COPY Code/Web_App Code/Web_App
RUN useradd --create-home --uid 10001 app
USER app

ENV PYTHONPATH=/app/Code HOST=0.0.0.0 PORT=5000
EXPOSE 5000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:5000/healthz', timeout=4)"
CMD ["python", "-m", "superres", "serve"]
