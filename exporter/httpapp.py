"""The exporter's HTTP surface: ``/``, ``/metrics``, ``/health``.

``create_app`` is a factory over a private registry and a
:class:`~exporter.health.Health`, so tests drive it with FastAPI's
TestClient and no network. The routes are plain ``def`` handlers: Starlette
runs them in its thread pool, so collecting a large registry never blocks
the event loop that the pipeline's background tasks share.

``/metrics`` negotiates the format with prometheus_client's own
``choose_encoder``: OpenMetrics when the scraper asks for it (Prometheus
does by default), the classic text format otherwise.

Example::

    $ curl -s localhost:9809/metrics | grep requests_total
    vllm_audit_requests_total{endpoint="chat",finish_reason="stop",model="tiny",status="completed",user="alice"} 3.0
    $ curl -s -o /dev/null -w '%{http_code}' localhost:9809/health
    200
"""

from __future__ import annotations

import html

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import CollectorRegistry

from exporter import __version__
from exporter.health import Health

_LANDING = """<!doctype html>
<html><head><meta charset="utf-8"><title>{title}</title></head>
<body><h1>{title}</h1><p>version {version}</p>
<ul><li><a href="metrics">/metrics</a> (Prometheus)</li>
<li><a href="health">/health</a> (JSON; 503 when unhealthy)</li></ul>
</body></html>
"""


def create_app(*, registry: CollectorRegistry, health: Health,
               title: str = "vllm-audit-exporter") -> FastAPI:
    # No OpenAPI/docs routes: the surface is three fixed endpoints, and an
    # exporter has no business serving a Swagger UI.
    app = FastAPI(title=title, version=__version__, docs_url=None, redoc_url=None,
                  openapi_url=None)
    landing = _LANDING.format(title=html.escape(title), version=html.escape(__version__))

    @app.get("/", response_class=HTMLResponse)
    def index() -> HTMLResponse:
        return HTMLResponse(landing)

    @app.get("/metrics")
    def metrics(request: Request) -> Response:
        encoder, content_type = choose_encoder(request.headers.get("accept", ""))
        return Response(content=encoder(registry), media_type=None,
                        headers={"Content-Type": content_type})

    @app.get("/health")
    def health_route() -> JSONResponse:
        healthy, body = health.report()
        return JSONResponse(body, status_code=200 if healthy else 503,
                            headers={"Cache-Control": "no-store"})

    return app
