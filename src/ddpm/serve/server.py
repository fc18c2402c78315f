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
"""

from __future__ import annotations

import base64
import io
import itertools
import json
import math
import threading
import time
import typing
import urllib.parse
from collections import OrderedDict
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Callable, Optional

import torch
from PIL import Image

from ..data.datasets import load_data
from ..data.imagedata import to_pil, to_uint8
from ..diffusion.process import levels, q_sample
from ..errors import InputError
from ..pipeline import Pipeline
from ..registry import SAMPLERS
from ..settings import hints
from ..storage.files import write_npz

MAX_IMAGES = 16  # images per draw
MAX_STEPS = 1000  # and never more than the run's T
MAX_UPLOAD = 4 * 2**20  # bytes of an uploaded image
MAX_PIXELS = 4096 * 4096  # pixels of an uploaded image, before it is resized
MAX_BODY = 2 * MAX_UPLOAD  # a JSON request: a mask drawn on the page travels in it as a PNG
DRAINED = 16 * MAX_UPLOAD  # a body over its limit is read and dropped up to this size, else the connection closes
MAX_QUEUE = 2  # draws waiting behind the running one; more get 429
KEPT = 16  # finished draws and uploads kept for download, the oldest dropped first
PREVIEW_SHARE = 0.2  # a latent run decodes previews while they cost at most this share of the draw


class Refused(Exception):
    """A request answered with `status` and one line of JSON."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


class Cancelled(Exception):
    """A draw stopped by its page: the stop button, or the page closed."""


@dataclass
class Model:
    """A run being served: its pipeline, its data set (loaded when first asked for) and its uploads."""

    name: str
    path: Path
    pipe: Pipeline
    _data: Optional[torch.Tensor] = None
    uploads: OrderedDict = field(default_factory=OrderedDict)
    _ids: itertools.count = field(default_factory=lambda: itertools.count(1))

    @property
    def data(self) -> torch.Tensor:
        if self._data is None:
            d = self.pipe.config.data
            self._data = load_data(d).images  # uint8 [N, C, H, W], at the run's size and channels
        return self._data

    def info(self) -> dict:
        config, pipe = self.pipe.config, self.pipe
        s = config.sample
        alpha_bar = pipe.diffusion.schedule.alpha_bar
        stride = max(1, len(alpha_bar) // 200)
        return {
            "name": self.name, "data": config.data.name, "steps_trained": pipe.step, "kind": config.kind,
            "objective": config.diffusion.objective, "schedule": config.diffusion.schedule,
            "parameters": sum(p.numel() for p in pipe.network.parameters()), "image": list(pipe.image_shape),
            "classes": config.model.num_classes, "T": pipe.diffusion.timesteps,
            "sampler": s.sampler, "steps": s.steps, "guidance": s.guidance,
            "samplers": [_sampler_info(spec, s) for spec in SAMPLERS],
            "alpha_bar": [[t, float(alpha_bar[t])] for t in range(0, len(alpha_bar), stride)],
        }

    def image(self, ref: object) -> torch.Tensor:
        """`data:K` (the K-th data set image) or `upload:ID`, as uint8 [C, H, W]."""
        kind, _, key = str(ref).partition(":")
        if kind == "data":
            index = _integer(key, "the image index")
            if not 0 <= index < len(self.data):
                raise Refused(f"the data set has {len(self.data)} images; the index must be in 0..{len(self.data) - 1} "
                              f"(got {index})")
            return self.data[index]
        if kind == "upload" and key in self.uploads:
            return self.uploads[key]
        raise Refused(f"unknown image {ref!r}; give data:K for the K-th data set image or upload:ID for an upload")

    def upload(self, body: bytes) -> str:
        picture = _picture(body, "the upload")
        c, h, w = self.pipe.image_shape
        picture = picture.convert("L" if c == 1 else "RGB")
        side = min(picture.size)  # center crop to a square, then the run's size
        left, top = (picture.width - side) // 2, (picture.height - side) // 2
        picture = picture.crop((left, top, left + side, top + side)).resize((w, h), Image.BICUBIC)
        image = torch.from_numpy(_array(picture)).permute(2, 0, 1).contiguous()
        key = f"u{next(self._ids)}"
        self.uploads[key] = image
        while len(self.uploads) > KEPT:
            self.uploads.popitem(last=False)
        return key


def _sampler_info(spec, s) -> dict:
    """A sampler as the page shows it: its options with their defaults, the run's values for its own."""
    own = s.options_for(spec.name).values()
    options = []
    for name, f in spec.options.fields().items():
        hint = hints(spec.options)[name]
        choices = list(typing.get_args(hint)) if typing.get_origin(hint) is typing.Literal else []
        value = own[name]
        options.append({"name": name, "help": f.metadata.get("help", name), "value": None if value == math.inf else value,
                        "choices": [c for c in choices if isinstance(c, str)], "text": hint is str and not choices})
    return {"name": spec.name, "description": spec.description, "options": options,
            "nfe": [spec.evaluations(k) for k in (1, 2)]}


def _integer(text: object, what: str, low: Optional[int] = None, high: Optional[int] = None) -> int:
    try:
        value = int(text)
        if isinstance(text, float) and not float(text).is_integer():
            raise ValueError
    except (TypeError, ValueError):
        raise Refused(f"{what} must be a whole number (got {text!r})") from None
    if (low is not None and value < low) or (high is not None and value > high):
        raise Refused(f"{what} must be in {low}..{high} (got {value})")
    return value


def _number(text: object, what: str, low: float, high: float) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise Refused(f"{what} must be a number (got {text!r})") from None
    if not low <= value <= high:
        raise Refused(f"{what} must be in [{low:g}, {high:g}] (got {value:g})")
    return value


def _picture(body: bytes, what: str) -> Image.Image:
    """An image file's bytes, opened; refused if too large or not an image."""
    if len(body) > MAX_UPLOAD:
        raise Refused(f"{what} has {len(body)} bytes; at most {MAX_UPLOAD} are taken")
    try:
        picture = Image.open(io.BytesIO(body))
        if picture.width * picture.height > MAX_PIXELS:
            raise Refused(f"{what} is {picture.width}x{picture.height} pixels; at most {MAX_PIXELS} pixels are taken")
        picture.load()
    except Refused:
        raise
    except Exception as error:  # PIL's many ways of saying "not an image"
        raise Refused(f"{what} is not an image that can be read ({type(error).__name__}); send a PNG or JPEG") from None
    return picture


def _array(picture: Image.Image):
    import numpy as np

    array = np.array(picture, dtype=np.uint8)  # a copy: torch wants a writable array
    return array[:, :, None] if array.ndim == 2 else array


def png(images: torch.Tensor) -> bytes:
    """uint8 [C, H, W] as PNG bytes."""
    out = io.BytesIO()
    to_pil(images).save(out, format="PNG")
    return out.getvalue()


def data_url(images: torch.Tensor) -> str:
    """uint8 [N, C, H, W] as one PNG (a near-square grid on white, 1 pixel apart) in a data URL."""
    n, c, h, w = images.shape
    columns = math.ceil(math.sqrt(n))
    rows = math.ceil(n / columns)
    grid = torch.full((c, rows * (h + 1) - 1, columns * (w + 1) - 1), 255, dtype=torch.uint8)
    for k in range(n):
        top, left = (k // columns) * (h + 1), (k % columns) * (w + 1)
        grid[:, top : top + h, left : left + w] = images[k]
    return "data:image/png;base64," + base64.b64encode(png(grid)).decode()


class Draws:
    """One draw at a time; up to MAX_QUEUE more wait in order. Each draw has an id, a cancel flag and
    its progress, which /api/status reports (the last KEPT draws)."""

    def __init__(self):
        self.condition = threading.Condition()
        self.queue: list[str] = []  # ids: the first is running
        self.state: OrderedDict = OrderedDict()
        self.results: OrderedDict = OrderedDict()
        self.ids = itertools.count(1)

    def enter(self) -> str:
        with self.condition:
            if len(self.queue) > MAX_QUEUE:
                raise Refused(f"{len(self.queue)} draws are running or waiting; try again when one ends", 429)
            key = f"d{next(self.ids)}"
            self.queue.append(key)
            self.state[key] = {"state": "queued", "steps_done": 0, "cancel": False}
            while len(self.state) > KEPT:
                self.state.popitem(last=False)
            return key

    def wait(self, key: str, tell: Callable[[int], None]) -> None:
        """Block until `key` is first in line, telling its place each time it changes."""
        told = None
        with self.condition:
            while self.queue[0] != key:
                place = self.queue.index(key)
                if place != told:
                    told = place
                    self.condition.release()
                    try:
                        tell(place)
                    finally:
                        self.condition.acquire()
                if self.state[key]["cancel"]:
                    raise Cancelled()
                self.condition.wait(0.2)
            self.state[key]["state"] = "running"

    def leave(self, key: str, state: str) -> None:
        with self.condition:
            self.queue.remove(key)
            if key in self.state:
                self.state[key]["state"] = state
            self.condition.notify_all()

    def step(self, key: str) -> None:
        """A step is done; stop here if the draw was cancelled."""
        record = self.state[key]
        if record["cancel"]:
            raise Cancelled()
        record["steps_done"] += 1

    def cancel(self, key: str) -> None:
        with self.condition:
            if key not in self.state:
                raise Refused(f"no draw {key!r}", 404)
            self.state[key]["cancel"] = True

    def keep(self, key: str, images: torch.Tensor, labels) -> None:
        self.results[key] = (images, labels)
        while len(self.results) > KEPT:
            self.results.popitem(last=False)

    def status(self) -> dict:
        with self.condition:
            return {"running": self.queue[0] if self.queue else None, "waiting": max(0, len(self.queue) - 1),
                    "draws": {key: {k: v for k, v in record.items() if k != "cancel"}
                              for key, record in self.state.items()}}


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
        index = _integer(query.get("run", 0), "run", 0, len(self.models) - 1)
        return self.models[index]


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
        except InputError as error:  # what Pipeline and the edit functions refuse
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
        t = _integer(query.get("t"), "t", 0, pipe.diffusion.timesteps - 1)
        seed = _integer(query.get("seed", 0), "the seed", 0, 2**31 - 1)
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
            index = _integer(rest[:-4], "the image number", 0, len(images) - 1)
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
        model = self.server.model(request)
        work = Work.parse(model, request)  # every check before the stream starts: a refusal is a 400
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


@dataclass
class Work:
    """A checked draw: what to run through the pipeline, and how each step becomes a frame."""

    model: Model
    task: str
    n: int
    seed: int
    plan: object
    kwargs: dict
    total: int

    @property
    def nfe(self) -> int:
        return self.plan.nfe if self.task != "interpolate" else 0

    @classmethod
    def parse(cls, model: Model, r: dict) -> "Work":
        known = {"run", "task", "n", "sampler", "steps", "seed", "options", "class", "guidance", "image", "image_b",
                 "mask", "strength", "frames", "resample", "jump"}
        unknown = sorted(set(r) - known)
        if unknown:
            raise Refused(f"unknown field {unknown[0]!r}; a draw takes {', '.join(sorted(known))}")
        pipe, task = model.pipe, r.get("task", "sample")
        if task not in ("sample", "inpaint", "img2img", "interpolate"):
            raise Refused(f"unknown task {task!r}; choose sample, inpaint, img2img or interpolate")
        n = _integer(r.get("n", 1), "n", 1, MAX_IMAGES)
        seed = _integer(r.get("seed", 0), "the seed", 0, 2**31 - 1)
        steps = None if r.get("steps") is None else _integer(r["steps"], "steps", 1, min(MAX_STEPS, pipe.diffusion.timesteps))
        options = r.get("options") or {}
        if not isinstance(options, dict):
            raise Refused("options must be an object of the sampler's options, e.g. {\"eta\": 0.5}")
        classes = r.get("class")
        if classes is not None and classes != "all":
            classes = _integer(classes, "the class", 0, max(0, pipe.num_classes - 1))
        guidance = None if r.get("guidance") is None else _number(r["guidance"], "the guidance", 0, 100)
        sampler = r.get("sampler")
        if sampler is not None and not isinstance(sampler, str):
            raise Refused(f"the sampler must be a name (got {sampler!r})")
        kwargs: dict = {}
        if task == "interpolate":
            frames = _integer(r.get("frames", 8), "frames", 2, MAX_IMAGES)
            kwargs = {"a": model.image(r.get("image")), "b": model.image(r.get("image_b")), "frames": frames}
            plan = pipe.options("ddim", steps, eta=0.0)
            return cls(model, task, frames, seed, plan, {**kwargs, "steps": steps}, 0)
        plan = pipe.plan(n, sampler, steps, None, classes, guidance, **options)  # refuses what the CLI refuses
        if task == "inpaint":
            mask = _mask(r.get("mask"), pipe)
            resample = _integer(r.get("resample", 1), "resample", 1, 10)
            jump = _integer(r.get("jump", 10), "jump", 1, plan.steps)
            kwargs = {"image": model.image(r.get("image")), "mask": mask, "resample": resample, "jump": jump}
            if plan.spec.repaint_eta is None:
                raise Refused(f"inpainting takes ddpm or ddim steps, not {plan.sampler}")
            total = plan.steps + (resample - 1) * jump * (plan.steps // jump)
            return cls(model, task, n, seed, plan, kwargs, total)
        if task == "img2img":
            strength = _number(r.get("strength", 0.5), "the strength", 0, 1)
            kwargs = {"image": model.image(r.get("image")), "strength": strength}
            return cls(model, task, n, seed, plan, kwargs, round(strength * plan.steps))
        return cls(model, task, n, seed, plan, {}, plan.steps)

    def run(self, emit: Callable[[dict], None]) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """The images (uint8 [n, C, H, W]) and labels, calling `emit(frame)` after every step."""
        pipe, plan, k = self.model.pipe, self.plan, self.kwargs
        frames = Frames(pipe, emit)
        common = {"n": self.n, "sampler": plan.sampler, "steps": plan.steps, "seed": self.seed,
                  "guidance": plan.guidance if pipe.num_classes else None}
        if self.task == "sample":
            images = pipe.draw(plan, self.seed, progress=False, callback=frames.step)
            return images, plan.labels
        if self.task == "img2img":
            images = pipe.img2img(k["image"], k["strength"], callback=frames.step, **common)
            return images, None
        if self.task == "inpaint":
            images = pipe.inpaint(k["image"], k["mask"], resample=k["resample"], jump=k["jump"],
                                  callback=frames.repaint, **common)
            return images, None
        return pipe.interpolate(k["a"], k["b"], k["frames"], k["steps"]), None


def _mask(value: object, pipe: Pipeline) -> torch.Tensor:
    """A mask drawn on the page: a PNG data URL, white where the image is to be filled, as floats [H, W]."""
    if not isinstance(value, str) or not value.startswith("data:image/png;base64,"):
        raise Refused("the mask must be a PNG data URL (white: fill, black: keep)")
    try:
        body = base64.b64decode(value.split(",", 1)[1], validate=True)
    except ValueError:
        raise Refused("the mask's data URL is not base64") from None
    return pipe.mask_tensor(_picture(body, "the mask").convert("L"))  # of the image's size, or the pipeline says so


class Frames:
    """Each step of a draw as a frame for the page: t, sigma_t and log SNR, x_t and the predicted x0.
    A latent run's x_t are latents (their first three channels are shown); its x0 is decoded while
    previews cost at most PREVIEW_SHARE of the draw's time so far."""

    def __init__(self, pipe: Pipeline, emit: Callable[[dict], None]):
        self.pipe, self.emit = pipe, emit
        self.count, self.started, self.decoding = 0, time.perf_counter(), 0.0

    def step(self, i: int, t, x_t: torch.Tensor, prediction) -> None:
        self._frame(t, x_t, prediction.x0)

    def repaint(self, level: int, x: torch.Tensor, target: torch.Tensor) -> None:
        self._frame(level, x, None)

    def _frame(self, t, x_t: torch.Tensor, x0: Optional[torch.Tensor]) -> None:
        pipe = self.pipe
        alpha, s, _ = levels(pipe.diffusion.schedule, torch.tensor([float(t)]), x_t[:1])
        alpha, s = float(alpha.flatten()[0]), float(s.flatten()[0])
        frame = {"step": self.count, "t": round(float(t), 3), "sigma": s / max(alpha, 1e-12),
                 "log_snr": 2 * math.log(max(alpha, 1e-12) / max(s, 1e-12))}
        if pipe.codec is None:
            frame["x_t"] = data_url(to_uint8(x_t.clamp(-1, 1).float().cpu()))
            if x0 is not None:
                frame["x0"] = data_url(to_uint8(x0.clamp(-1, 1).float().cpu()))
        else:
            latents = x_t[:, :3].float().cpu()
            frame["x_t"] = data_url(to_uint8((latents / latents.abs().amax().clamp(min=1e-6)).clamp(-1, 1)))
            elapsed = time.perf_counter() - self.started
            if x0 is not None and self.decoding <= PREVIEW_SHARE * elapsed:
                begun = time.perf_counter()
                frame["x0"] = data_url(to_uint8(pipe.to_images(x0)))
                self.decoding += time.perf_counter() - begun
            frame["preview_share"] = round(self.decoding / max(elapsed, 1e-9), 3)
        self.count += 1
        self.emit(frame)


def load_models(runs: list[str], device: str = "auto") -> list[Model]:
    models = []
    for path in runs:
        pipe = Pipeline.from_run(path, device=device)
        models.append(Model(Path(path).name or str(path), Path(path), pipe))
    return models


def serve(runs: list[str], host: str = "127.0.0.1", port: int = 8000, device: str = "auto",
          ready: Optional[Callable[[Server], None]] = None) -> None:
    """Serve the runs until Ctrl-C (or `server.shutdown()` from another thread, as the tests do)."""
    server = Server(load_models(runs, device), host, port)
    if ready is not None:
        ready(server)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
