"""`ddpm serve --run RUN`: one page to watch, steer and edit trained models live, on this machine.

The standard library serves it: a `ThreadingHTTPServer`, one HTML file (page.html: vanilla
JavaScript, no font, script or style from elsewhere) and a small JSON API. A draw streams each
step of the reverse process as Server-Sent Events over the response of a POST, which the page
reads with `fetch`; x_t and the predicted x0 travel as PNG data URLs. No framework is needed for
one page, one stream at a time and a dozen routes, and none would be lighter to install.

Every image goes through `Pipeline` and its edit methods, with the samplers' own `callback`: there
is no second sampling path, so the same seed and settings give the images `ddpm sample` gives.

    GET  /                      the page
    GET  /api/runs              each run: what it is, its samplers and their options, alpha_bar
    GET  /api/data?run&index    a data set image (PNG)
    GET  /api/forward?run&image&t&seed    x_t ~ q(x_t | x0) of an image, with alpha_bar_t
    POST /api/upload?run        an image (at most MAX_UPLOAD bytes, MAX_PIXELS pixels), cropped and
                                resized to the run's images; returns its id
    POST /api/draw              {"task": sample | inpaint | img2img | interpolate, ...}: the stream
    POST /api/stop?id           cancel a draw (a closed page cancels its own at its next step)
    GET  /api/status            the draw running, the queue, and how far each recent draw got
    GET  /api/result/ID.npz, /api/result/ID/K.png    a finished draw, as `ddpm sample` writes it

A request is checked as the command line checks its flags: anything wrong is HTTP 400 with one line
of JSON, {"error": "..."}, never a traceback. One draw runs at a time; MAX_QUEUE more wait, told
their place, and more are refused with 429. The run directories are only read: no lock is taken
and nothing is written there.

This module is the HTTP: the server, its routes, bodies and headers. The rest has a room each:
limits.py (what a request may ask), tasks.py (one class per draw task, its fields declared once),
queue.py (the draws in line), runs.py (the runs served), encoding.py (images in and out).
"""

from __future__ import annotations

import io
import json
import math
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Callable, Optional

import torch

from ..data.imagedata import to_uint8
from ..diffusion.process import q_sample
from ..errors import InputError
from ..storage.files import write_npz
from . import tasks
from .encoding import data_url, png
from .limits import DRAINED, KEPT, MAX_BODY, MAX_UPLOAD, SEEDS, Refused, whole
from .queue import Cancelled, Draws
from .runs import Model, load_models

__all__ = ["Server", "load_models", "serve"]


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, models: list[Model], host: str = "127.0.0.1", port: int = 8000):
        self.models, self.draws = models, Draws()
        self.page = resources.files("ddpm.serve").joinpath("page.html").read_bytes()
        super().__init__((host, port), Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/"

    def model(self, query: dict) -> Model:
        return self.models[whole(query.get("run", 0), "run", 0, len(self.models) - 1)]


class Handler(BaseHTTPRequestHandler):
    server: Server
    server_version = "ddpm-serve"

    def log_message(self, format, *args):  # quiet: the terminal shows the URL and errors
        pass

    # ---- routing ----------------------------------------------------------------------------------

    def do_GET(self):
        self._route({"/": self._page, "/index.html": self._page, "/api/runs": self._runs, "/api/data": self._data,
                     "/api/forward": self._forward, "/api/status": self._status})

    def do_POST(self):
        self._route({"/api/upload": self._upload, "/api/draw": self._draw, "/api/stop": self._stop})

    def _route(self, routes: dict) -> None:
        parsed = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(parsed.query))
        try:
            if parsed.path.startswith("/api/result/") and self.command == "GET":
                return self._result(parsed.path[len("/api/result/"):])
            handler = routes.get(parsed.path)  # exact paths only: nothing on disk is served by its name
            if handler is None:
                raise Refused(f"no such page: {parsed.path}", 404)
            handler(query)
        except Refused as refused:
            self._json({"error": str(refused)}, refused.status)
        except InputError as error:  # what Pipeline, the edit functions and a field's declaration refuse
            self._json({"error": str(error)}, 400)
        except (BrokenPipeError, ConnectionResetError):
            pass
        except Exception as error:  # a defect: one line here and to the page, not a traceback
            print(f"ddpm serve: {self.command} {parsed.path} failed: {type(error).__name__}: {error}", flush=True)
            try:
                self._json({"error": f"the server failed: {type(error).__name__}: {error}"}, 500)
            except OSError:
                pass

    def _send(self, body: bytes, kind: str, status: int = 200, headers: Optional[dict] = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def _json(self, value, status: int = 200) -> None:
        self._send(json.dumps(value).encode(), "application/json", status)

    def _body(self, limit: int) -> bytes:
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            raise Refused("the request needs a Content-Length") from None
        if length > limit:
            remaining = length if length <= DRAINED else 0  # read and dropped: the client hears the answer, not a reset
            while remaining > 0:
                chunk = self.rfile.read(min(2**16, remaining))
                remaining = remaining - len(chunk) if chunk else 0
            self.close_connection = True
            raise Refused(f"the request has {length} bytes; at most {limit} are taken")
        return self.rfile.read(length)

    # ---- pages and small answers ---------------------------------------------------------------------

    def _page(self, query: dict) -> None:
        # The page may talk to this server alone: no font, script, style or image from elsewhere.
        policy = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                  "img-src 'self' data: blob:; connect-src 'self'; form-action 'none'; base-uri 'none'")
        self._send(self.server.page, "text/html; charset=utf-8", headers={"Content-Security-Policy": policy})

    def _runs(self, query: dict) -> None:
        self._json([model.info() for model in self.server.models])

    def _status(self, query: dict) -> None:
        self._json(self.server.draws.status())

    def _data(self, query: dict) -> None:
        model = self.server.model(query)
        self._send(png(model.image(f"data:{query.get('index', '')}")), "image/png")

    def _forward(self, query: dict) -> None:
        """x_t ~ q(x_t | x0) (Ho et al. eq. 4) of an image at timestep t, with the same noise for every t
        of one seed, so that a slider shows one image drowning."""
        model = self.server.model(query)
        pipe = model.pipe
        t = whole(query.get("t"), "t", 0, pipe.diffusion.timesteps - 1)
        seed = whole(query.get("seed", 0), "the seed", 0, SEEDS)
        x0 = model.image(query.get("image", "data:0")).float()[None] / 127.5 - 1
        noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
        schedule = pipe.diffusion.schedule
        x_t = q_sample(schedule, x0.to(pipe.device), torch.tensor([t], device=pipe.device), noise.to(pipe.device))
        alpha_bar = float(schedule.alpha_bar[t])
        self._json({"t": t, "alpha_bar": alpha_bar, "log_snr": math.log(alpha_bar / (1 - alpha_bar)),
                    "image": data_url(to_uint8(x_t.clamp(-1, 1).float().cpu()))})

    def _upload(self, query: dict) -> None:
        model = self.server.model(query)
        key = model.upload(self._body(MAX_UPLOAD))
        self._json({"image": f"upload:{key}", "url": data_url(model.image(f"upload:{key}")[None])})

    def _stop(self, query: dict) -> None:
        self.server.draws.cancel(query.get("id", ""))
        self._json({"stopped": query.get("id")})

    def _result(self, name: str) -> None:
        key, _, rest = name.partition("/")
        results = self.server.draws.results
        if key.endswith(".npz") and key[:-4] in results:
            images, labels = results[key[:-4]]
            out = io.BytesIO()
            write_npz(out, images, labels)
            return self._send(out.getvalue(), "application/octet-stream",
                              headers={"Content-Disposition": f'attachment; filename="{key}"'})
        if key in results and rest.endswith(".png"):
            images = results[key][0]
            index = whole(rest[:-4], "the image number", 0, len(images) - 1)
            return self._send(png(images[index]), "image/png")
        raise Refused(f"no such result: {name} (a finished draw's ID.npz or ID/K.png; the last {KEPT} are kept)", 404)

    # ---- a draw -----------------------------------------------------------------------------------

    def _draw(self, query: dict) -> None:
        try:
            request = json.loads(self._body(MAX_BODY) or b"{}")
        except json.JSONDecodeError as error:
            raise Refused(f"the request is not JSON ({error.msg})") from None
        if not isinstance(request, dict):
            raise Refused("the request must be a JSON object")
        work = tasks.parse(self.server.models, request)  # every check before the stream starts: a refusal is a 400
        draws = self.server.draws
        key = draws.enter()
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        state = "failed"
        try:
            draws.wait(key, lambda place: self._event("queued", {"id": key, "place": place}))
            self._event("start", {"id": key, "steps": work.total, "nfe": work.nfe})
            started = time.perf_counter()
            images, labels = work.run(lambda frame: (draws.step(key), self._event("step", frame)))
            draws.keep(key, images, labels)
            self._event("done", {"id": key, "seconds": round(time.perf_counter() - started, 3), "nfe": work.nfe,
                                 "images": [data_url(image[None]) for image in images],
                                 "npz": f"/api/result/{key}.npz", "png": [f"/api/result/{key}/{k}.png"
                                                                          for k in range(len(images))]})
            state = "done"
        except Cancelled:
            state = "cancelled"
            self._quietly("cancelled", {"id": key})
        except (BrokenPipeError, ConnectionResetError):
            state = "cancelled"  # the page went away: its draw stops here
        except (InputError, Refused) as error:
            self._quietly("error", {"error": str(error)})
        finally:
            draws.leave(key, state)

    def _event(self, name: str, value: dict) -> None:
        self.wfile.write(f"event: {name}\ndata: {json.dumps(value)}\n\n".encode())
        self.wfile.flush()

    def _quietly(self, name: str, value: dict) -> None:
        try:
            self._event(name, value)
        except (BrokenPipeError, ConnectionResetError):
            pass


def serve(runs: list[str], host: str = "127.0.0.1", port: int = 8000, device: str = "auto",
          ready: Optional[Callable[[Server], None]] = None, checkpoints: Optional[list] = None) -> None:
    """Serve the runs (each with the weights of its folder in `checkpoints`; None: the newest) until
    Ctrl-C (or `server.shutdown()` from another thread, as the tests do)."""
    server = Server(load_models(runs, device, checkpoints), host, port)
    if ready is not None:
        ready(server)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
