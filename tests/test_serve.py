"""`ddpm serve` without a browser: what it draws, what it refuses, and how it holds under load.

The server runs in this process, on a free loopback port, over a tiny run; every request stays on
127.0.0.1 and every loop here is bounded. tests/test_serve_browser.py drives the page in Chromium.
"""

from __future__ import annotations

import http.client
import io
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import events, request, Slow, slowed, trained
from ddpm import Pipeline
from ddpm.cli import main
from ddpm.serve.limits import MAX_UPLOAD, PREVIEW_SHARE
from ddpm.serve.server import Server, load_models




def files_of(path: Path) -> dict:
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(path.rglob("*"))}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return trained(tmp_path_factory, "serve", "--max-steps", "4", "--data", "digits")


@pytest.fixture(scope="module")
def server(run):
    before = files_of(run)
    server = Server(load_models([str(run)], "cpu"), "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    assert files_of(run) == before, "the server wrote into the run directory"






def png_bytes(picture: Image.Image) -> bytes:
    out = io.BytesIO()
    picture.save(out, format="PNG")
    return out.getvalue()


def test_a_draw_streams_every_step_and_gives_what_ddpm_sample_gives(server, run, tmp_path):
    status, body = request(server, "POST", "/api/draw", {"task": "sample", "steps": 5, "seed": 3, "n": 4,
                                                         "sampler": "ddim", "options": {"eta": 0.5}})
    stream = events(body)
    assert status == 200 and [name for name, _ in stream] == ["start"] + ["step"] * 5 + ["done"]
    steps = [value for name, value in stream if name == "step"]
    assert [s["step"] for s in steps] == list(range(5)) and steps[0]["t"] > steps[-1]["t"] and "x0" in steps[0]
    assert steps[0]["log_snr"] < steps[-1]["log_snr"]  # noise to data
    done = stream[-1][1]
    expected = Pipeline.from_run(run, device="cpu")(4, "ddim", 5, seed=3, eta=0.5, progress=False)
    for k, url in enumerate(done["png"]):
        status, image = request(server, "GET", url)
        assert status == 200 and np.array_equal(np.asarray(Image.open(io.BytesIO(image))), expected[k, 0].numpy())
    assert main(["sample", "--run", str(run), "--n", "4", "--steps", "5", "--seed", "3", "--sampler", "ddim", "--eta",
                 "0.5", "--out", str(tmp_path / "s.npz"), "--grid", str(tmp_path / "g.png"), "--device", "cpu"]) == 0
    status, npz = request(server, "GET", done["npz"])
    assert np.array_equal(np.load(io.BytesIO(npz))["arr_0"], np.load(tmp_path / "s.npz")["arr_0"])


@pytest.mark.parametrize("method, path, body, message", [
    ("POST", "/api/draw", {"steps": 0}, "steps must be >= 1 (got 0)"),
    ("POST", "/api/draw", {"n": 17}, "n must be in [1, 16] (got 17)"),
    ("POST", "/api/draw", {"sampler": "euler"}, "unknown sampler 'euler'"),
    ("POST", "/api/draw", {"sampler": "ddpm", "options": {"eta": 0.5}}, "applies to the ddim sampler only"),
    ("POST", "/api/draw", {"sampler": "ddim", "options": {"eta": 2}}, "DDIM's eta must be in [0, 1]"),
    ("POST", "/api/draw", {"task": "paint"}, "unknown task 'paint'"),
    ("POST", "/api/draw", {"stpes": 5}, "unknown field 'stpes'"),
    ("POST", "/api/draw", {"steps": 101}, "steps must be in [1, 100] (got 101)"),  # the run's T, known with the run
    ("POST", "/api/draw", {"task": "img2img", "image": "data:0", "strength": 1.5}, "strength must be in [0, 1] (got 1.5)"),
    ("POST", "/api/draw", {"task": "interpolate", "strength": 0.5},
     "unknown field 'strength'; interpolate takes frames, image, image_b, run, steps, task"),
    ("POST", "/api/draw", {"task": "inpaint", "image": "data:0", "sampler": "dpm++2m", "mask": "data:image/png;base64," +
                           __import__("base64").b64encode(png_bytes(Image.new("L", (8, 8), 255))).decode()},
     "inpainting takes ddpm or ddim steps, not dpm++2m"),
    ("POST", "/api/draw", b"{not json", "the request is not JSON"),
    ("POST", "/api/draw", {"task": "inpaint", "image": "data:0", "mask": "data:image/png;base64," +
                           __import__("base64").b64encode(png_bytes(Image.new("L", (4, 4), 255))).decode()},
     "the mask is 4x4 but the image is 8x8"),
    ("POST", "/api/draw", {"task": "inpaint", "image": "data:0", "mask": "a mask"}, "the mask must be a PNG data URL"),
    ("POST", "/api/draw", {"task": "img2img", "image": "data:99999"}, "the index must be in 0..1796"),
    ("POST", "/api/draw", {"task": "img2img", "image": "/etc/passwd"}, "unknown image '/etc/passwd'"),
    ("POST", "/api/draw", {"run": 3}, "run must be in [0, 0] (got 3)"),
    ("GET", "/api/forward?t=5000", None, "t must be in [0, 99] (got 5000)"),
    ("POST", "/api/upload", b"GIF89a not really", "the upload is not an image that can be read"),
    ("POST", "/api/upload", png_bytes(Image.new("1", (5000, 5000))), "is 5000x5000 pixels; at most"),
    ("POST", "/api/upload", b"\0" * (MAX_UPLOAD + 1), f"the request has {MAX_UPLOAD + 1} bytes; at most {MAX_UPLOAD}"),
])
def test_a_bad_request_is_a_400_with_one_line(server, method, path, body, message):
    status, answer = request(server, method, path, body)
    error = json.loads(answer)["error"]
    assert status == 400 and message in error and "\n" not in error and "Traceback" not in error, error


def test_an_upload_is_cropped_and_resized_to_the_runs_images_and_can_be_noised(server):
    def picture(url: str) -> np.ndarray:
        return np.asarray(Image.open(io.BytesIO(__import__("base64").b64decode(url.split(",")[1]))))

    status, answer = request(server, "POST", "/api/upload", png_bytes(Image.new("RGB", (40, 30), (255, 255, 255))))
    upload = json.loads(answer)
    assert status == 200 and upload["image"].startswith("upload:")
    assert picture(upload["url"]).shape == (8, 8) and (picture(upload["url"]) == 255).all()  # gray, 8x8, still white
    status, answer = request(server, "GET", f"/api/forward?t=0&image={upload['image']}")
    assert picture(json.loads(answer)["image"]).min() > 230  # at t = 0, nearly the image itself
    status, answer = request(server, "GET", "/api/forward?t=99&image=data:0&seed=1")
    assert status == 200 and json.loads(answer)["alpha_bar"] < 1e-3


@pytest.mark.parametrize("path", ["/../etc/passwd", "/%2e%2e/%2e%2e/etc/passwd", "/api/../../etc/passwd",
                                  "/..%2f..%2fetc%2fpasswd", "/api/result/../../../etc/passwd", "/src/ddpm/serve/",
                                  "/page.html", "/api/"])
def test_no_file_is_served_by_its_path_and_no_folder_is_listed(server, path):
    status, answer = request(server, "GET", path)
    assert status == 404 and b"root:" not in answer and b"<html" not in answer


def test_the_inpainted_images_keep_the_known_pixels_exactly(server):
    import base64

    mask = np.zeros((8, 8), np.uint8)
    mask[2:6, 1:5] = 255
    url = "data:image/png;base64," + base64.b64encode(png_bytes(Image.fromarray(mask))).decode()
    status, body = request(server, "POST", "/api/draw", {"task": "inpaint", "image": "data:5", "mask": url, "steps": 10,
                                                         "seed": 1, "n": 2})
    stream = events(body)
    assert status == 200 and sum(name == "step" for name, _ in stream) == 10 and stream[-1][0] == "done"
    _, original = request(server, "GET", "/api/data?index=5")
    original = np.asarray(Image.open(io.BytesIO(original)))
    for url in stream[-1][1]["png"]:
        result = np.asarray(Image.open(io.BytesIO(request(server, "GET", url)[1])))
        assert np.array_equal(result[mask == 0], original[mask == 0]) and not np.array_equal(result, original)


def test_img2img_and_interpolation_go_through_the_pipelines_edits(server):
    status, body = request(server, "POST", "/api/draw", {"task": "img2img", "image": "data:2", "strength": 0.6,
                                                         "steps": 10, "n": 3})
    stream = events(body)
    assert sum(name == "step" for name, _ in stream) == 6 and len(stream[-1][1]["png"]) == 3
    status, body = request(server, "POST", "/api/draw", {"task": "interpolate", "image": "data:2", "image_b": "data:3",
                                                         "frames": 4, "steps": 5})
    assert events(body)[-1][1]["png"] and len(events(body)[-1][1]["png"]) == 4


def _open_draw(server, body: dict) -> http.client.HTTPResponse:
    connection = http.client.HTTPConnection(*server.server_address[:2], timeout=60)
    connection.request("POST", "/api/draw", body=json.dumps(body).encode())
    return connection.getresponse()


def _next_event(response) -> tuple[str, dict]:
    lines = []
    while True:
        line = response.fp.readline().decode()
        if line == "\n" and lines:
            name, value = lines
            return name.strip()[len("event: "):], json.loads(value[len("data: "):])
        if line.strip():
            lines.append(line)


def _status(server, key: str) -> dict:
    return json.loads(request(server, "GET", "/api/status")[1])["draws"][key]




@pytest.fixture()
def slow(server):
    with slowed(server, 0.03):
        yield


def test_stop_and_a_closed_page_end_the_computation_within_a_step(server, slow):
    response = _open_draw(server, {"steps": 100, "n": 2})
    assert _next_event(response)[0] == "start"
    name, first = _next_event(response)
    key = json.loads(request(server, "GET", "/api/status")[1])["running"]
    assert request(server, "POST", f"/api/stop?id={key}")[0] == 200
    at_stop = _status(server, key)["steps_done"]
    assert _next_event(response)[0] in ("step", "cancelled")
    time.sleep(0.3)
    stopped = _status(server, key)
    time.sleep(0.3)
    # the step under way when the stop came is the last: however busy the machine, no more
    assert stopped["state"] == "cancelled" and stopped == _status(server, key) and stopped["steps_done"] <= at_stop + 1
    # a page that goes away: the next step's frame cannot be written, and the draw stops there
    response = _open_draw(server, {"steps": 100, "n": 2})
    _next_event(response), _next_event(response)
    key = json.loads(request(server, "GET", "/api/status")[1])["running"]
    response.close()
    at_close = _status(server, key)["steps_done"]
    deadline = time.monotonic() + 5
    while _status(server, key)["state"] == "running" and time.monotonic() < deadline:
        time.sleep(0.05)
    # a write after the close may still be taken by the kernel's buffer; the one after it fails
    assert _status(server, key)["state"] == "cancelled" and _status(server, key)["steps_done"] <= at_close + 3


def test_one_draw_at_a_time_two_wait_their_turn_and_more_are_refused(server, slow):
    running = _open_draw(server, {"steps": 100})
    assert _next_event(running)[0] == "start"
    waiting = [_open_draw(server, {"steps": 2}) for _ in range(2)]
    places = [_next_event(response)[1]["place"] for response in waiting]
    status, answer = request(server, "POST", "/api/draw", {"steps": 2})
    assert places == [1, 2] and status == 429 and "running or waiting" in json.loads(answer)["error"]
    assert request(server, "POST", f"/api/stop?id={json.loads(request(server, 'GET', '/api/status')[1])['running']}")[0] == 200
    for response in waiting:  # each in turn runs to its end
        names = [name for name, _ in events(response.read())]
        assert names[-1] == "done" and names.count("step") == 2


def test_a_hundred_concurrent_small_requests_leave_it_serving_with_flat_memory(server):
    def rss() -> int:
        return int(next(line for line in open("/proc/self/status") if line.startswith("VmRSS")).split()[1])

    def one(k: int) -> int:
        return request(server, "GET", "/api/status" if k % 2 else "/api/runs")[0]

    with ThreadPoolExecutor(max_workers=25) as pool:
        list(pool.map(one, range(100)))  # warm: the first answers build what later ones reuse
        before = rss()
        answers = list(pool.map(one, range(100)))
    assert answers == [200] * 100 and rss() - before < 30_000, f"{rss() - before} kB more"
    assert events(request(server, "POST", "/api/draw", {"steps": 2})[1])[-1][0] == "done"


def test_the_command_prints_its_url_serves_and_stops_cleanly_on_ctrl_c(run):
    """Ctrl-C stops it, also when it was started with SIGINT ignored (as a shell's background job and
    some test runners' workers start it: a flaky hang until the command took SIGINT itself); so does kill."""
    import signal
    import subprocess
    import sys

    ignore = lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)  # noqa: E731
    for host, warned, start, stop in [("127.0.0.1", False, ignore, signal.SIGINT),
                                      ("127.0.0.2", True, None, signal.SIGTERM)]:  # another address: said reachable
        child = subprocess.Popen([sys.executable, "-m", "ddpm", "serve", "--run", str(run), "--host", host, "--port", "0",
                                  "--device", "cpu"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 preexec_fn=start)
        try:
            line = child.stdout.readline()
            assert line.startswith(f"ddpm serve: http://{host}:") and "Ctrl-C" in line, line
            address = line.split("//")[1].split("/")[0]
            connection = http.client.HTTPConnection(address, timeout=30)
            connection.request("GET", "/api/runs")
            assert connection.getresponse().status == 200
            child.send_signal(stop)
            out, err = child.communicate(timeout=30)
        finally:
            child.kill()
        assert child.returncode == 0 and "stopped" in out and ("warning: listening on" in err) == warned, err


@pytest.mark.parametrize("argv, message", [
    (["--port", "70000"], "--port must be in 0..65535"),
    (["--run", "{tmp}/none"], "does not"),
])
def test_the_commands_bad_input_is_one_line_and_exit_2(run, tmp_path, capsys, argv, message):
    argv = [a.format(tmp=tmp_path) for a in argv]
    assert main(["serve", *(["--run", str(run)] if argv[0] != "--run" else []), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and err.count("\n") == 0, err


def test_a_latent_run_streams_decoded_previews_within_their_share_of_the_draw(tmp_path, monkeypatch):
    """x_t of a latent run are latents; its x0 is decoded for a preview while previews have cost at
    most PREVIEW_SHARE of the draw so far. Here each decode is made slow: few steps get one."""
    from helpers import own_config

    from ddpm import train

    monkeypatch.setenv("DDPM_CACHE", str(tmp_path / "cache"))
    run = train(own_config(), tmp_path / "latent", progress=False).path
    server = Server(load_models([str(run)], "cpu"), "127.0.0.1", 0)
    pipe = server.models[0].pipe
    decode = pipe.codec.decode
    monkeypatch.setattr(pipe.codec, "decode", lambda z: (time.sleep(0.05), decode(z))[1])
    pipe.network = Slow(pipe.network, 0.02)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        stream = events(request(server, "POST", "/api/draw", {"steps": 20, "n": 2})[1])
    finally:
        server.shutdown()
        server.server_close()
    steps = [value for name, value in stream if name == "step"]
    previews = sum("x0" in step for step in steps)
    assert len(steps) == 20 and 1 <= previews < 20 and "x0" in steps[0]
    assert all(step["preview_share"] <= PREVIEW_SHARE + 0.05 / (0.02 * (k + 1))
               for k, step in enumerate(steps))  # the share, but for the one decode that crossed it
    assert steps[-1]["preview_share"] <= 0.3 and stream[-1][0] == "done"


def test_several_runs_are_served_side_by_side(run):
    server = Server(load_models([str(run), str(run)], "cpu"), "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        assert [r["name"] for r in json.loads(request(server, "GET", "/api/runs")[1])] == ["run", "run"]
        assert events(request(server, "POST", "/api/draw", {"run": 1, "steps": 2})[1])[-1][0] == "done"
    finally:
        server.shutdown()
        server.server_close()
