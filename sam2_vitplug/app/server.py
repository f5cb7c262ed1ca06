"""The HTTP side: routes of the page's JSON API, static files from the package, and the checks
on what comes in (host header, body size, file names).

Why the standard library's ``ThreadingHTTPServer``: the page needs a dozen small JSON routes and
one upload, on one machine; an ASGI stack would add dependencies and nothing the page uses.
Threads keep the page responsive while a click asks SAM2 for a mask; long runs go to
:class:`.jobs.Jobs`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, unquote, urlsplit

from ..matching.io import atomic_write_bytes, load_rgb
from .jobs import Context, Jobs, Settings, defaults
from .masks import from_rle, png_data_url
from .paths import BadRequest, inside, list_images
from .refstore import RefStore
from .review import Review
from .segment import Prompt, Segmenter

if TYPE_CHECKING:
    import numpy as np

logger = logging.getLogger(__name__)

STATIC = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
          "app.css": "text/css; charset=utf-8"}
IMAGE_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".bmp": "image/bmp",
               ".tif": "image/tiff", ".tiff": "image/tiff", ".webp": "image/webp"}
MAX_JSON = 1 << 20


class App:
    """Everything a request handler needs: folders, models, references, the job and the review."""

    def __init__(self, ctx: Context, encoder: str | None, max_upload: int, segmenter: Segmenter | None = None) -> None:
        self.ctx = ctx
        self.encoder = encoder
        self.max_upload = max_upload
        ctx.out.mkdir(parents=True, exist_ok=True)
        self.refs = RefStore(ctx.refs)
        self.review = Review()
        self.jobs = Jobs(ctx, self._run_done)
        self.segmenter = segmenter or Segmenter(ctx.sam2_config, ctx.sam2_ckpt, ctx.sam2_override, ctx.device or "cpu")
        self._sizes: dict[str, tuple[int, int]] = {}

    def _run_done(self, results: Path) -> None:
        self.review.load(results, self.ctx.targets)

    def image(self, name: object) -> tuple[Path, "np.ndarray"]:
        path = inside(self.ctx.images, name)
        return path, load_rgb(path)

    # ---- routes: each returns a JSON-able object or raises BadRequest
    def get_state(self, q: dict) -> dict:
        return {"images": list_images(self.ctx.images), "classes": self.refs.classes, "references": self.refs.summary(),
                "defaults": {**defaults(), "encoder": self.encoder or ""}, "job": self.jobs.status(),
                "sam2_config": self.ctx.sam2_config, "out": str(self.ctx.out), "max_upload": self.max_upload}

    def get_defaults(self, q: dict) -> dict:
        try:
            return {**defaults(q.get("method")), "encoder": self.encoder or ""}
        except ValueError as err:
            raise BadRequest(str(err)) from None

    def get_refs(self, q: dict) -> list[dict]:
        inside(self.ctx.images, q.get("image"))
        return [{"id": o.id, "class_name": o.class_name, "bbox": o.bbox, "mask": png_data_url(from_rle(o.rle))}
                for o in self.refs.of_image(q["image"])]

    def post_segment(self, body: dict) -> dict:
        path, rgb = self.image(body.get("image"))
        prompt = Prompt.parse(body, rgb.shape[1], rgb.shape[0])
        mask, score = self.segmenter.predict(path, rgb, prompt)
        return {"mask": png_data_url(mask), "score": round(score, 4), "area": int(mask.sum())}

    def post_add(self, body: dict) -> dict:
        path, rgb = self.image(body.get("image"))
        prompt = Prompt.parse(body, rgb.shape[1], rgb.shape[0])
        mask, score = self.segmenter.predict(path, rgb, prompt)  # the same mask the preview showed
        obj = self.refs.add(path.name, rgb.shape[1], rgb.shape[0], body.get("class_name"), mask, score)
        return {k: v for k, v in asdict(obj).items() if k != "rle"}

    def post_delete(self, body: dict) -> dict:
        self.refs.delete(body.get("id"))
        return {"deleted": body.get("id")}

    def post_run(self, body: dict) -> dict:
        settings = Settings.parse(body.get("settings") or {})
        categories = self.refs.to_coco()["categories"]
        self.jobs.start(settings, body.get("targets"), categories)
        return self.jobs.status()

    def get_job(self, q: dict) -> dict:
        return self.jobs.status()

    def get_review(self, q: dict) -> dict:
        return self.review.overview()

    def get_review_masks(self, q: dict) -> list[dict]:
        try:
            image_id = int(q.get("image_id", ""))
        except ValueError:
            raise BadRequest("image_id must be an integer") from None
        return self.review.masks(image_id)

    def post_decide(self, body: dict) -> dict:
        return self.review.decide(body.get("id"), body.get("status"), body.get("category_id"))

    def post_export(self, body: dict) -> dict:
        return self.review.export(self.ctx.out / "export", self.ctx.refs, body.get("min_score"))

    def upload(self, name: str, data: bytes) -> dict:
        """Store an uploaded image in the image folder (a new, plain name; must decode as an image)."""
        import io

        from PIL import Image

        path = inside(self.ctx.images, name, must_exist=False)
        if path.exists() or path.is_symlink():
            raise BadRequest(f"'{name}' already exists in the image folder; rename the file")
        try:
            with Image.open(io.BytesIO(data)) as im:
                im.verify()
        except Exception:  # noqa: BLE001 - PIL raises many types for bad data
            raise BadRequest(f"'{name}' is not an image PIL can read") from None
        atomic_write_bytes(path, data)
        return {"uploaded": name, "images": list_images(self.ctx.images)}


GET_ROUTES = {"/api/state": App.get_state, "/api/defaults": App.get_defaults, "/api/refs": App.get_refs,
              "/api/job": App.get_job, "/api/review": App.get_review, "/api/review/masks": App.get_review_masks}
POST_ROUTES = {"/api/segment": App.post_segment, "/api/references": App.post_add,
               "/api/references/delete": App.post_delete, "/api/run": App.post_run,
               "/api/review/decide": App.post_decide, "/api/export": App.post_export}


def make_handler(app: App, allowed_hosts: set[str] | None) -> type[BaseHTTPRequestHandler]:
    """A request handler class bound to ``app``; ``allowed_hosts`` (None: any) guards against DNS rebinding."""

    class Handler(BaseHTTPRequestHandler):
        server_version = "sam2-vitplug-app"
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt: str, *args) -> None:  # quiet: only errors go to the log
            logger.debug(fmt, *args)

        def _send(self, status: int, body: bytes, ctype: str, cache: bool = False) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("X-Content-Type-Options", "nosniff")
            self.send_header("Cache-Control", "max-age=3600" if cache else "no-store")
            self.end_headers()
            self.wfile.write(body)

        def _json(self, obj, status: int = 200) -> None:
            self._send(status, json.dumps(obj).encode(), "application/json")

        def _error(self, status: int, message: str) -> None:
            self._json({"error": message}, status)

        def _guard(self) -> bool:
            host = self.headers.get("Host", "")
            if allowed_hosts is not None and host not in allowed_hosts:
                self._error(HTTPStatus.FORBIDDEN, f"host '{host}' is not this app's address; open it as "
                                                  f"http://{sorted(allowed_hosts)[0]}/")
                return False
            return True

        def _body(self, limit: int) -> bytes:
            try:
                length = int(self.headers.get("Content-Length", ""))
            except ValueError:
                raise BadRequest("a Content-Length header is needed") from None
            if length < 0 or length > limit:
                raise _TooLarge(f"the request is {length} bytes; the limit is {limit} bytes "
                                f"(start the app with a larger --max-upload-mb for bigger images)")
            return self.rfile.read(length)

        def _dispatch(self, fn, arg) -> None:
            try:
                self._json(fn(app, arg))
            except _TooLarge as err:
                self.close_connection = True
                self._error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, str(err))
            except BadRequest as err:
                self._error(HTTPStatus.BAD_REQUEST, str(err))
            except Exception as err:  # noqa: BLE001 - the page gets one line, the log the traceback
                from ..errors import user_error

                cause = user_error(err)  # the library's one-line user errors, as the CLI finds them
                if cause is not None:
                    return self._error(HTTPStatus.BAD_REQUEST, str(cause.args[0] if isinstance(cause, KeyError)
                                                                   and cause.args else cause))
                logger.exception("request %s failed", self.path)
                self._error(HTTPStatus.INTERNAL_SERVER_ERROR, f"internal error ({type(err).__name__}: {err}); "
                                                              "the server log has the details")

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            if not self._guard():
                return
            url = urlsplit(self.path)
            path = unquote(url.path)
            query = {k: v[-1] for k, v in parse_qs(url.query).items()}
            if path in ("/", "/index.html"):
                path = "/static/index.html"
            if path.startswith("/static/"):
                name = path[len("/static/"):]
                if name not in STATIC:
                    return self._error(HTTPStatus.NOT_FOUND, f"no page file '{name}'")
                data = resources.files("sam2_vitplug.app").joinpath("static", name).read_bytes()
                return self._send(200, data, STATIC[name])
            if path.startswith("/images/"):
                try:
                    file = inside(app.ctx.images, path[len("/images/"):])
                except BadRequest as err:
                    return self._error(HTTPStatus.NOT_FOUND, str(err))
                return self._send(200, file.read_bytes(), IMAGE_TYPES.get(file.suffix.lower(), "application/octet-stream"),
                                  cache=True)
            if path in GET_ROUTES:
                return self._dispatch(GET_ROUTES[path], query)
            self._error(HTTPStatus.NOT_FOUND, f"no such page '{path}'")

        def do_POST(self) -> None:  # noqa: N802
            if not self._guard():
                return
            path = urlsplit(self.path).path
            if path == "/api/upload":
                # a non-simple content type: a cross-site page cannot send it without a (refused) preflight
                if self.headers.get("Content-Type") != "application/octet-stream":
                    return self._error(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "uploads must be application/octet-stream")
                return self._dispatch(lambda a, _: a.upload(unquote(self.headers.get("X-Filename", "")),
                                                            self._body(app.max_upload)), None)
            if path not in POST_ROUTES:
                return self._error(HTTPStatus.NOT_FOUND, f"no such action '{path}'")
            if self.headers.get("Content-Type", "").split(";")[0].strip() != "application/json":
                return self._error(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "send JSON (Content-Type: application/json)")

            def call(a: App, _):
                try:
                    body = json.loads(self._body(MAX_JSON) or b"{}")
                except json.JSONDecodeError as err:
                    raise BadRequest(f"the request is not valid JSON ({err})") from None
                if not isinstance(body, dict):
                    raise BadRequest("the request must be a JSON object")
                return POST_ROUTES[path](a, body)

            self._dispatch(call, None)

    return Handler


class _TooLarge(BadRequest):
    """A body over the limit: HTTP 413."""


def allowed_hosts_for(host: str, port: int) -> set[str] | None:
    """Host headers accepted for a local bind (None when bound to another interface: any)."""
    if host not in ("127.0.0.1", "localhost", "::1"):
        return None
    return {f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}"}


def serve(app: App, host: str, port: int) -> ThreadingHTTPServer:
    """A bound server (not yet serving); ``port`` 0 picks a free port."""
    server = ThreadingHTTPServer((host, port), make_handler(app, None))
    server.daemon_threads = True
    real_port = server.server_address[1]
    server.RequestHandlerClass = make_handler(app, allowed_hosts_for(host, real_port))
    return server


