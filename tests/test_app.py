"""``sam2-vitplug app``: path confinement, settings, the argv it hands the CLI, review/export
rules, the HTTP answers to bad input, and the whole page driven in headless Chromium on the
packaged demo model, checked against the same job run through the CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))

from sam2_vitplug.app.jobs import Context, Settings, memory_argv, run_argv, write_targets  # noqa: E402
from sam2_vitplug.app.masks import anchor, from_rle, to_rle  # noqa: E402
from sam2_vitplug.app.paths import BadRequest, check_name, inside, list_images  # noqa: E402
from sam2_vitplug.app.refstore import RefStore  # noqa: E402
from sam2_vitplug.app.review import Review  # noqa: E402

SETTINGS = {"encoder": "dinov2_demo", "method": "ntt", "shots": 5, "points_per_side": 8, "iou_thr": 0.4,
            "input_size": 224, "shared_backbone": True, "sets": "memory.min_size=16"}


def _png(path: Path, size=(32, 24)) -> Path:
    from PIL import Image

    Image.new("RGB", size, (10, 20, 30)).save(path)
    return path


# ---------------------------------------------------------------- paths
@pytest.mark.parametrize("name", ["../a.png", "/etc/passwd.png", "a/b.png", "a\\b.png", "..", "", ".hidden.png",
                                  "x.txt", "nul\x00.png", None, 3])
def test_bad_names_are_refused(name):
    with pytest.raises(BadRequest):
        check_name(name)


def test_inside_refuses_symlinks_out_and_missing(tmp_path):
    root, outside = tmp_path / "imgs", tmp_path / "secret"
    root.mkdir(), outside.mkdir()
    _png(root / "ok.png")
    _png(outside / "s.png")
    (root / "link.png").symlink_to(outside / "s.png")
    (root / "inlink.png").symlink_to(root / "ok.png")
    assert inside(root, "ok.png") == root / "ok.png"
    assert inside(root, "inlink.png") == root / "inlink.png"  # a link that stays inside is fine
    with pytest.raises(BadRequest, match="outside"):
        inside(root, "link.png")
    with pytest.raises(BadRequest, match="no image"):
        inside(root, "missing.png")
    assert list_images(root) == ["inlink.png", "ok.png"]  # the escaping link is not offered


# ---------------------------------------------------------------- settings and the CLI argv
def test_settings_errors_name_the_setting():
    Settings.parse(SETTINGS)
    for key, bad, words in (("shots", 0, "shots"), ("points_per_side", "many", "points_per_side"),
                            ("iou_thr", 2, "iou_thr"), ("method", "fast", "method"), ("encoder", " ", "encoder"),
                            ("sets", "memory.min_size = 3", "SECTION.KEY=VALUE"), ("shots", True, "shots")):
        with pytest.raises(BadRequest, match=words):
            Settings.parse({**SETTINGS, key: bad})


def test_argv_is_what_the_cli_parses(tmp_path):
    from sam2_vitplug.cli import build_parser
    from sam2_vitplug.cli.fewshot import cmd_memory, cmd_run

    ctx = Context(tmp_path / "imgs", tmp_path / "out", "sam2_vit_demo", None, ("a=b",), "cpu")
    s = Settings.parse(SETTINGS)
    mem = build_parser().parse_args(memory_argv(ctx, s))
    run = build_parser().parse_args(run_argv(ctx, s))
    assert mem.func is cmd_memory and run.func is cmd_run
    assert (mem.refs, mem.out, mem.shots, mem.input_size, mem.method, mem.set) == (
        str(ctx.refs), str(ctx.bank), 5, 224, "ntt", ["memory.min_size=16"])
    assert (run.bank, run.ann, run.points_per_side, run.iou_thr, run.shared_backbone, run.quiet, run.sam2_override) == (
        str(ctx.bank), str(ctx.targets), 8, 0.4, True, True, ["a=b"])


def test_targets_use_the_folder_ids(tmp_path):
    from sam2_vitplug.matching.runner import images_from_folder

    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for n in ("c.png", "a.png", "b.png"):
        _png(imgs / n)
    ctx = Context(imgs, tmp_path / "out", "sam2_vit_demo")
    assert write_targets(ctx, ["c.png", "a.png"], [{"id": 1, "name": "x"}]) == 2
    data = json.loads(ctx.targets.read_text())
    ids = {e.file_name: e.image_id for e in images_from_folder(imgs)}
    assert [(im["id"], im["file_name"], im["width"]) for im in data["images"]] == [(ids["a.png"], "a.png", 32),
                                                                                 (ids["c.png"], "c.png", 32)]
    with pytest.raises(BadRequest, match="no such images"):
        write_targets(ctx, ["zz.png"], [])
    with pytest.raises(BadRequest, match="at least one"):
        write_targets(ctx, [], [])


def _wait_job(jobs, timeout=30.0):
    end = time.time() + timeout
    while jobs.status()["state"] == "running" and time.time() < end:
        time.sleep(0.02)
    return jobs.status()


def test_jobs_run_memory_then_a_fresh_run_and_report_errors(tmp_path):
    from sam2_vitplug.app.jobs import Jobs

    imgs = tmp_path / "imgs"
    imgs.mkdir()
    _png(imgs / "a.png")
    ctx = Context(imgs, tmp_path / "out", "sam2_vit_demo")
    ctx.out.mkdir()
    stale = [ctx.results, ctx.out / "results.json.shard-0.jsonl", ctx.out / "results.json.settings.json"]
    for p in stale:
        p.write_text("old")
    calls, done, progress, gate = [], [], [], threading.Event()

    def fake_cli(argv):
        gate.wait(10)
        calls.append((argv[1], [p.exists() for p in stale]))
        if argv[1] == "run":  # one image finished: the shard line is what the progress counts
            (ctx.out / "results.json.shard-0.jsonl").write_text(json.dumps({"image_id": 1, "results": []}) + "\n")
            progress.append({k: jobs.status()[k] for k in ("state", "stage", "done", "total")})
            ctx.results.write_text("[]")

    jobs = Jobs(ctx, done.append, cli=fake_cli)
    s = Settings.parse(SETTINGS)
    with pytest.raises(BadRequest, match="at least one reference"):
        jobs.start(s, None, [])
    jobs.start(s, None, [{"id": 1, "name": "x"}])
    with pytest.raises(BadRequest, match="already in progress"):
        jobs.start(s, None, [{"id": 1, "name": "x"}])
    gate.set()
    status = _wait_job(jobs)
    assert (status["state"], status["done"], status["total"]) == ("done", 1, 1)
    assert calls == [("memory", [True, True, True]), ("run", [False, False, False])]  # the old run is gone first
    assert progress == [{"state": "running", "stage": "segmenting the targets", "done": 1, "total": 1}]
    assert done == [ctx.results] and status["commands"][0].startswith("sam2-vitplug fewshot memory --refs ")

    def failing(argv):
        raise ValueError("--encoder 'nope' is not a preset")

    jobs = Jobs(ctx, done.append, cli=failing)
    jobs.start(s, None, [{"id": 1, "name": "x"}])
    status = _wait_job(jobs)
    assert (status["state"], status["message"]) == ("error", "--encoder 'nope' is not a preset")


def test_call_cli_gives_the_cli_one_line_message(tmp_path):
    from sam2_vitplug.app.jobs import call_cli

    with pytest.raises(ValueError, match="COCO annotation file .* does not exist"):
        call_cli(["fewshot", "memory", "--refs", str(tmp_path / "r.json"), "--images", str(tmp_path / "nope"),
                  "--encoder", "dinov2_demo", "--out", str(tmp_path / "b.safetensors")])
    with pytest.raises(ValueError, match="command line was refused"):
        call_cli(["fewshot", "memory", "--no-such-flag"])


# ---------------------------------------------------------------- references, review
def test_refstore_writes_coco_that_reads_back(tmp_path):
    mask = np.zeros((24, 32), bool)
    mask[5:15, 8:20] = True
    store = RefStore(tmp_path / "references.json")
    store.add("b.png", 32, 24, "cat", mask, 0.9)
    store.add("a.png", 32, 24, " dog ", mask, 0.8)
    with pytest.raises(BadRequest, match="empty"):
        store.add("a.png", 32, 24, "dog", np.zeros_like(mask), 0.8)
    with pytest.raises(BadRequest, match="class name"):
        store.add("a.png", 32, 24, "  ", mask, 0.8)
    coco = json.loads((tmp_path / "references.json").read_text())
    assert [c["name"] for c in coco["categories"]] == ["cat", "dog"]
    assert [im["file_name"] for im in coco["images"]] == ["a.png", "b.png"]
    ann = coco["annotations"][0]
    assert ann["bbox"] == [8.0, 5.0, 12.0, 10.0] and ann["area"] == 120.0
    assert (from_rle(ann["segmentation"]) == mask).all()
    again = RefStore(tmp_path / "references.json")  # a restarted app keeps them
    assert again.to_coco() == store.to_coco()
    again.delete(1)
    assert [o.class_name for o in again.objects] == ["dog"]
    assert [c["name"] for c in again.to_coco()["categories"]] == ["dog"]
    with pytest.raises(BadRequest):
        again.delete(99)


def test_review_keeps_and_exports_by_the_rules(tmp_path):
    mask = np.zeros((8, 8), bool)
    mask[2:6, 2:6] = True
    rle = to_rle(mask)
    results = [{"image_id": 1, "category_id": 1, "score": s, "bbox": [2, 2, 4, 4], "segmentation": rle}
               for s in (0.9, 0.7, 0.3, 0.1)]
    (tmp_path / "results.json").write_text(json.dumps(results))
    targets = {"images": [{"id": 1, "file_name": "a.png", "width": 8, "height": 8}], "annotations": [],
               "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}
    (tmp_path / "targets.json").write_text(json.dumps(targets))
    (tmp_path / "refs.json").write_text("{}")
    review = Review()
    review.load(tmp_path / "results.json", tmp_path / "targets.json")
    review.decide(1, "rejected")
    review.decide(3, "accepted")
    review.decide(0, category_id=2)
    with pytest.raises(BadRequest):
        review.decide(7, "rejected")
    with pytest.raises(BadRequest):
        review.decide(0, "maybe")
    with pytest.raises(BadRequest):
        review.decide(0, category_id=5)
    assert [(r["score"], r["category_id"]) for r in review.kept(0.5)] == [(0.9, 2), (0.1, 1)]
    assert review.counts(0.5) == {2: 1, 1: 1}
    out = review.export(tmp_path / "export", tmp_path / "refs.json", 0.2)
    assert out["detections"] == 3
    assert [r["score"] for r in json.loads((tmp_path / "export" / "results.json").read_text())] == [0.9, 0.3, 0.1]
    with pytest.raises(BadRequest, match="minimum score"):
        review.export(tmp_path / "export", tmp_path / "refs.json", 1.5)
    assert anchor(mask) in ([3, 3], [3, 4], [4, 3], [4, 4])  # the most interior pixel
    assert anchor(np.zeros((4, 4), bool)) is None


# ---------------------------------------------------------------- the HTTP side
class _NoModel:
    """A segmenter that must not be called by these requests."""

    def predict(self, *a):
        raise AssertionError("SAM2 was asked for a mask")

    def preload(self):
        pass


@pytest.fixture()
def server(tmp_path):
    from sam2_vitplug.app.server import App, serve

    imgs = tmp_path / "imgs"
    imgs.mkdir()
    _png(imgs / "a.png")
    ctx = Context(imgs, tmp_path / "out", "sam2_vit_demo")
    app = App(ctx, "dinov2_demo", 2048, segmenter=_NoModel())
    srv = serve(app, "127.0.0.1", 0)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}", imgs, app
    srv.shutdown()
    srv.server_close()


def _call(url, data=None, headers=None, method=None):
    req = urllib.request.Request(url, data=data, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def test_http_answers_bad_input_with_one_message(server):
    url, imgs, _ = server
    status, body = _call(url + "/")
    assert status == 200 and b"sam2-vitplug few-shot" in body
    for page in ("/", "/static/app.js", "/static/app.css"):  # nothing from outside: the page works offline
        assert not any(s in _call(url + page)[1] for s in (b"http://", b"https://", b"//cdn")), page
    j = {"Content-Type": "application/json"}
    cases = [
        (url + "/api/segment", b"{not json", j, 400, "not valid JSON"),
        (url + "/api/segment", json.dumps({"image": "../a.png"}).encode(), j, 400, "not a plain file name"),
        (url + "/api/segment", json.dumps({"image": "a.png", "points": []}).encode(), j, 400, "positive point"),
        (url + "/api/segment", json.dumps({"image": "a.png", "points": [[99, 1, 1]]}).encode(), j, 400, "outside"),
        (url + "/api/segment", b"{}", {"Content-Type": "text/plain"}, 415, "JSON"),
        (url + "/api/run", json.dumps({"settings": SETTINGS}).encode(), j, 400, "at least one reference"),
        (url + "/api/review/decide", json.dumps({"id": 0, "status": "rejected"}).encode(), j, 400, "run first"),
        (url + "/api/export", json.dumps({"min_score": 0.5}).encode(), j, 400, "run first"),
        (url + "/api/upload", b"x" * 4096, {"Content-Type": "application/octet-stream", "X-Filename": "b.png"}, 413,
         "limit"),
        (url + "/api/upload", b"not an image", {"Content-Type": "application/octet-stream", "X-Filename": "b.png"}, 400,
         "not an image"),
        (url + "/api/upload", b"x", {"Content-Type": "application/octet-stream", "X-Filename": "..%2Fb.png"}, 400,
         "plain file name"),
        (url + "/api/upload", b"x", {"Content-Type": "application/octet-stream", "X-Filename": "a.png"}, 400,
         "already exists"),
    ]
    for target, data, headers, code, words in cases:
        status, body = _call(target, data, headers, "POST")
        assert (status, words in json.loads(body)["error"]) == (code, True), (target, body)
    assert not (imgs / "b.png").exists() and not (imgs.parent / "b.png").exists()
    for path, code in (("/images/..%2Fout%2Freferences.json", 404), ("/static/../server.py", 404), ("/nothing", 404)):
        assert _call(url + path)[0] == code
    status, body = _call(url + "/api/state", headers={"Host": "attacker.example:80"})
    assert status == 403 and b"not this app's address" in body
    png = (imgs / "a.png").read_bytes()
    status, body = _call(url + "/api/upload", png, {"Content-Type": "application/octet-stream", "X-Filename": "c.png"},
                         "POST")
    assert status == 200 and json.loads(body)["images"] == ["a.png", "c.png"] and (imgs / "c.png").read_bytes() == png


def test_http_run_names_an_unreadable_target(server):
    url, imgs, app = server
    app.refs.add("a.png", 32, 24, "thing", np.ones((24, 32), bool), 0.9)
    (imgs / "broken.png").write_bytes(b"\x89PNG not really")
    status, body = _call(url + "/api/run", json.dumps({"settings": SETTINGS, "targets": None}).encode(),
                         {"Content-Type": "application/json"}, "POST")
    assert status == 400 and "'broken.png' cannot be read as an image" in json.loads(body)["error"]
    status, body = _call(url + "/api/run", json.dumps({"settings": {**SETTINGS, "iou_thr": "x"}}).encode(),
                         {"Content-Type": "application/json"}, "POST")
    assert status == 400 and "iou_thr" in json.loads(body)["error"]


def test_cli_refuses_a_missing_folder(tmp_path, capsys):
    from sam2_vitplug.cli import main

    assert main(["app", "--images", str(tmp_path / "nope"), "--sam2-config", "sam2_vit_demo"]) == 2
    err = capsys.readouterr().err
    assert "is not a directory" in err and "Traceback" not in err


def test_cli_names_a_busy_port(tmp_path, capsys):
    import socket

    from sam2_vitplug.cli import main

    (tmp_path / "imgs").mkdir()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code = main(["app", "--images", str(tmp_path / "imgs"), "--sam2-config", "sam2_vit_demo", "--port", str(port),
                     "--out", str(tmp_path / "out"), "--no-preload"])
    err = capsys.readouterr().err
    assert code == 2 and f"cannot listen on 127.0.0.1:{port}" in err and "pick another --port" in err


# ---------------------------------------------------------------- the page in a real browser
def _browser():
    """A headless Chromium driven by Debian's chromedriver, or a skip saying what is missing."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium is not installed (pip install -e '.[dev]')")
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not binary or not driver:
        pytest.skip("Debian's chromium and chromium-driver are not installed (make test installs them as root)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1500,1100",
                "--force-device-scale-factor=1"):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(executable_path=driver), options=opts)


def _wait(driver, cond, timeout=60.0, what="the page"):
    end = time.time() + timeout
    while time.time() < end:
        value = cond(driver)
        if value:
            return value
        time.sleep(0.1)
    msg = driver.find_element("id", "msg").text
    raise AssertionError(f"timed out waiting for {what}; page message: {msg!r}")


def _click_image_px(driver, canvas, x, y):
    """Click the canvas at image pixel (x, y) (canvas scaled by its data-scale)."""
    from selenium.webdriver.common.action_chains import ActionChains

    s = float(canvas.get_attribute("data-scale"))
    w, h = canvas.size["width"], canvas.size["height"]
    ActionChains(driver).move_to_element_with_offset(canvas, int((x + 0.5) * s - w / 2), int((y + 0.5) * s - h / 2)) \
        .click().perform()


def _set_min_score(driver, value):
    """Type the minimum score into its number box (as a user would) and leave the field."""
    from selenium.webdriver.common.keys import Keys

    num = driver.find_element("id", "min-score-num")
    num.send_keys(Keys.CONTROL, "a")
    num.send_keys(str(value), Keys.TAB)


def _select_detection(driver, url, raw, candidates):
    """Click the label point of each candidate detection on its target until the page selects a
    candidate (a click picks the best-scoring shown mask under it); return its id."""
    for det in candidates:
        image_id = raw[det]["image_id"]
        masks = json.loads(_call(f"{url}/api/review/masks?image_id={image_id}")[1])
        ax, ay = next(m["anchor"] for m in masks if m["id"] == det)
        card = driver.find_element("css selector", f'.card[data-image-id="{image_id}"] canvas')
        panel = driver.find_element("id", "det-panel")
        before = panel.get_attribute("data-picks")
        _click_image_px(driver, card, ax, ay)
        _wait(driver, lambda d: panel.get_attribute("data-picks") != before, 10, "the click to be handled")
        chosen = int(panel.get_attribute("data-id") or -1)
        if chosen in candidates:
            assert from_rle(raw[chosen]["segmentation"])[ay, ax], "the selected mask is not under the click"
            return chosen
    raise AssertionError(f"none of the detections {candidates[:10]} could be selected by a click")


def _pick_ref(coco, cat_id, skip_images):
    """The largest annotation of a class that the sampler accepts (box sides >= 32, 12 px off the border)."""
    ims = {im["id"]: im for im in coco["images"]}
    ok = [a for a in coco["annotations"] if a["category_id"] == cat_id and a["image_id"] not in skip_images
          and min(a["bbox"][2:]) >= 32 and a["bbox"][0] > 12 and a["bbox"][1] > 12
          and a["bbox"][0] + a["bbox"][2] < ims[a["image_id"]]["width"] - 12
          and a["bbox"][1] + a["bbox"][3] < ims[a["image_id"]]["height"] - 12]
    assert ok, f"no usable reference of class {cat_id} in the synthetic split"
    return max(ok, key=lambda a: a["area"])


def _cli(args, cwd):
    exe = Path(sys.executable).with_name("sam2-vitplug")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "sam2_vitplug.cli"]
    out = subprocess.run([*cmd, *args], cwd=cwd, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0, out.stderr[-3000:]


def test_page_end_to_end_in_chromium_matches_the_cli(tmp_path):
    """References by a click and a box, run on 3 targets, score filter, one rejection, export;
    the export equals the CLI's ``fewshot memory`` + ``fewshot run`` on the exported references."""
    from make_synthetic_dataset import DatasetSpec, make_dataset
    from pycocotools.coco import COCO
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    from sam2_vitplug.matching.runner import images_from_folder

    driver = _browser()
    shots = tmp_path / "screenshots"
    shots.mkdir()
    data = make_dataset(tmp_path / "shapes", DatasetSpec(train=1, val=6, image_size=256, seed=1000))
    images = data / "val" / "images"
    gt = json.loads((data / "val" / "annotations.json").read_text())
    names = {im["id"]: im["file_name"] for im in gt["images"]}
    circle = _pick_ref(gt, 1, set())
    square = _pick_ref(gt, 2, {circle["image_id"]})
    ref_images = {names[circle["image_id"]], names[square["image_id"]]}
    targets = [n for n in sorted(names.values()) if n not in ref_images][:3]

    out = tmp_path / "app"
    proc = subprocess.Popen([str(Path(sys.executable).with_name("sam2-vitplug")), "app", "--images", str(images),
                             "--sam2-config", "sam2_vit_demo", "--encoder", "dinov2_demo", "--port", "0", "--out",
                             str(out), "--device", "cpu"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    try:
        line = proc.stdout.readline()
        assert "open http://127.0.0.1:" in line, line
        url = line.split("open ")[1].split()[0]
        threading.Thread(target=proc.stdout.read, daemon=True).start()  # keep the pipe drained
        driver.get(url)
        find = lambda i: driver.find_element(By.ID, i)  # noqa: E731
        _wait(driver, lambda d: find("ref-canvas").get_attribute("data-image"), what="the first image")

        # an upload lands in the folder (a name sorted last keeps the others' ids); a non-image is refused in the page
        find("upload").send_keys(str(_png(tmp_path / "zz_upload.png", (64, 48))))
        _wait(driver, lambda d: find("ref-canvas").get_attribute("data-image") == "zz_upload.png", what="the upload")
        assert (images / "zz_upload.png").is_file() and len(driver.find_elements(By.CSS_SELECTOR, "#image-list li")) == 7
        (tmp_path / "fake.png").write_bytes(b"not a picture")
        find("upload").send_keys(str(tmp_path / "fake.png"))
        _wait(driver, lambda d: "not an image" in find("msg").text, what="the upload refusal")
        assert not (images / "fake.png").exists()

        # 1. references: a positive click on a circle, a dragged box around a square
        for ann, cls, how in ((circle, "circle", "click"), (square, "square", "box")):
            name = names[ann["image_id"]]
            driver.find_element(By.CSS_SELECTOR, f'#image-list li[data-name="{name}"]').click()
            canvas = find("ref-canvas")
            _wait(driver, lambda d: canvas.get_attribute("data-image") == name, what="the image")
            masked = lambda: _wait(driver, lambda d: find("ref-status").get_attribute("data-ready")  # noqa: E731
                                   not in (None, before), what="the SAM2 mask")
            if how == "box":  # the demo model learnt from points only: a box alone gives a poor mask, so a click too
                bx, by, bw, bh = ann["bbox"]
                s = float(canvas.get_attribute("data-scale"))
                w, h = canvas.size["width"], canvas.size["height"]
                before = find("ref-status").get_attribute("data-ready")
                ActionChains(driver).move_to_element_with_offset(canvas, int((bx - 3) * s - w / 2), int((by - 3) * s - h / 2)) \
                    .click_and_hold().move_by_offset(int((bw + 6) * s / 2), int((bh + 6) * s / 2)) \
                    .move_by_offset(int((bw + 6) * s / 2), int((bh + 6) * s / 2)).release().perform()
                masked()
            before = find("ref-status").get_attribute("data-ready")
            x, y = anchor(from_rle(ann["segmentation"]))
            _click_image_px(driver, canvas, x, y)
            masked()
            if how == "click":  # a negative point on the background, then Undo takes it back
                before = find("ref-status").get_attribute("data-ready")
                ActionChains(driver).key_down(Keys.SHIFT).perform()
                _click_image_px(driver, canvas, 3, 3)
                ActionChains(driver).key_up(Keys.SHIFT).perform()
                masked()
                assert canvas.get_attribute("data-prompt") == "10"
                before = find("ref-status").get_attribute("data-ready")
                find("undo-point").click()
                masked()
            assert canvas.get_attribute("data-prompt") == ("1b" if how == "box" else "1")
            field = find("class-name")
            field.clear()
            field.send_keys(cls)
            n = len(driver.find_elements(By.CSS_SELECTOR, "#ref-list li"))
            find("add-ref").click()
            _wait(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#ref-list li")) == n + 1, what="the reference")
            driver.save_screenshot(str(shots / f"1_reference_{cls}.png"))
        # a third object, added and then deleted
        other = next(a for a in gt["annotations"] if a["image_id"] == square["image_id"] and a["category_id"] != 2)
        before = find("ref-status").get_attribute("data-ready")
        _click_image_px(driver, find("ref-canvas"), *anchor(from_rle(other["segmentation"])))
        _wait(driver, lambda d: find("ref-status").get_attribute("data-ready") != before, what="the SAM2 mask")
        find("class-name").clear()
        find("class-name").send_keys("junk")
        find("add-ref").click()
        _wait(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#ref-list li")) == 3, what="the third reference")
        assert [c["name"] for c in json.loads((out / "references.json").read_text())["categories"]] == [
            "circle", "square", "junk"]
        driver.find_element(By.CSS_SELECTOR, "#ref-list li:last-child .delete-ref").click()
        _wait(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#ref-list li")) == 2, what="the deletion")
        refs = json.loads((out / "references.json").read_text())
        assert [c["name"] for c in refs["categories"]] == ["circle", "square"] and len(refs["annotations"]) == 2
        m_click, m_box = (from_rle(a["segmentation"]) for a in refs["annotations"])
        for ann, m in ((circle, m_click), (square, m_box)):
            x, y = anchor(from_rle(ann["segmentation"]))
            assert m[y, x], "the clicked point is not in its mask"
        bx, by, bw, bh = square["bbox"]
        assert m_box[int(by) - 4:int(by + bh) + 4, int(bx) - 4:int(bx + bw) + 4].sum() >= 0.9 * m_box.sum() > 0

        # 2. run on three targets with the demo's settings
        find("tab-run").click()
        find("s-encoder").clear()  # the server's message for a missing setting shows in the page
        find("run").click()
        _wait(driver, lambda d: "an encoder is needed" in find("msg").text, what="the missing-encoder message")
        find("s-encoder").send_keys("dinov2_demo")
        for i, v in (("s-points", "8"), ("s-input", "224"), ("s-shots", "5"), ("s-sets", "memory.min_size=16")):
            find(i).clear()
            find(i).send_keys(v)
        find("s-shared").click()
        find("t-none").click()
        for t in targets:
            driver.find_element(By.CSS_SELECTOR, f'#target-list input[value="{t}"]').click()
        assert find("target-count").text == f"3 of {len(names) + 1}"
        find("run").click()
        _wait(driver, lambda d: find("job-status").get_attribute("data-state") in ("done", "error"), 240, "the run")
        assert find("job-status").get_attribute("data-state") == "done", find("job-status").text
        assert find("progress").get_attribute("value") == find("progress").get_attribute("max") == "3"
        driver.save_screenshot(str(shots / "2_run.png"))

        # 3. review: raise the minimum score, reject one detection by clicking its mask
        find("tab-review").click()
        _wait(driver, lambda d: find("grid").get_attribute("data-ready") == "1", what="the review grid")
        raw = json.loads((out / "results.json").read_text())
        scores = sorted(r["score"] for r in raw)
        assert len(scores) >= 4, f"too few detections to review: {scores}"
        thr = round(scores[len(scores) // 2] + 0.0004, 3)  # three decimals: the filter must use the typed value
        thr = thr if sum(s >= thr for s in scores) >= 2 else round(scores[-2] - 0.005, 3)
        _set_min_score(driver, thr)
        visible = [i for i, r in enumerate(raw) if r["score"] >= thr]
        assert 0 < len(visible) < len(raw)
        _wait(driver, lambda d: find("shown-count").get_attribute("data-kept") == str(len(visible)), what="the filter")
        driver.save_screenshot(str(shots / "3_review_filtered.png"))
        rejected = _select_detection(driver, url, raw, visible)
        find("reject").click()
        _wait(driver, lambda d: find("shown-count").get_attribute("data-kept") == str(len(visible) - 1), what="the rejection")
        counts = driver.execute_script(  # read in one go: the table is redrawn on every decision
            "return Object.fromEntries([...document.querySelectorAll('#counts tr[data-class-id]')]"
            ".map((r) => [r.dataset.classId, r.cells[1].textContent]))")
        kept_ids = [i for i in visible if i != rejected]
        assert counts == {str(c): str(sum(raw[i]["category_id"] == c for i in kept_ids)) for c in (1, 2)}
        driver.save_screenshot(str(shots / "3_review_rejected.png"))

        # fix the class of a kept detection, then accept one under the minimum (shown by lowering the slider)
        fixed = _select_detection(driver, url, raw, kept_ids)
        new_class = 3 - raw[fixed]["category_id"]
        Select(find("det-class")).select_by_value(str(new_class))
        _wait(driver, lambda d: json.loads(_call(url + "/api/review")[1])["detections"][fixed]["category_id"] == new_class,
              what="the class fix")
        _set_min_score(driver, 0)
        accepted = _select_detection(driver, url, raw, [i for i, r in enumerate(raw) if r["score"] < thr])
        find("accept").click()
        _wait(driver, lambda d: "accepted" in find("det-info").text, what="the acceptance")
        _set_min_score(driver, thr)
        _wait(driver, lambda d: find("shown-count").get_attribute("data-kept") == str(len(kept_ids) + 1),
              what="the accepted detection to count")

        # 4. export
        find("tab-export").click()
        find("export").click()
        _wait(driver, lambda d: find("export-result").get_attribute("data-done") == "1", what="the export")
        driver.save_screenshot(str(shots / "4_export.png"))
        assert "error" not in find("msg").get_attribute("class") and find("msg").text == "exported"
    finally:
        driver.quit()
        proc.terminate()
        proc.wait(timeout=30)
    exported = json.loads((out / "export" / "results.json").read_text())
    assert (out / "export" / "references.json").read_bytes() == (out / "references.json").read_bytes()

    # the same job through the CLI, typed out here, from the exported references
    cli = tmp_path / "cli"
    ids = {e.file_name: e.image_id for e in images_from_folder(images)}
    sub = {"images": [im for im in gt["images"] if im["file_name"] in targets],
           "annotations": [a for a in gt["annotations"] if names[a["image_id"]] in targets],
           "categories": [c for c in gt["categories"] if c["id"] in (1, 2)]}
    for im in sub["images"]:
        assert ids[im["file_name"]] == im["id"]  # the folder's ids are the dataset's (000001.jpg -> 1)
    cli.mkdir()
    (cli / "targets.json").write_text(json.dumps(sub))
    common = ["--method", "ntt", "--sam2-config", "sam2_vit_demo", "--device", "cpu", "--set", "memory.min_size=16"]
    _cli(["fewshot", "memory", "--refs", str(out / "export" / "references.json"), "--images", str(images),
          "--encoder", "dinov2_demo", "--shots", "5", "--input-size", "224", "--out", str(cli / "bank.safetensors"),
          *common], tmp_path)
    _cli(["fewshot", "run", "--bank", str(cli / "bank.safetensors"), "--images", str(images), "--ann",
          str(cli / "targets.json"), "--points-per-side", "8", "--iou-thr", "0.4", "--shared-backbone", "--quiet",
          "--out", str(cli / "results.json"), *common], tmp_path)
    from safetensors.numpy import load_file

    page_bank, cli_bank = load_file(out / "bank.safetensors"), load_file(cli / "bank.safetensors")
    assert page_bank.keys() == cli_bank.keys() and all((page_bank[k] == cli_bank[k]).all() for k in page_bank)
    cli_results = json.loads((cli / "results.json").read_text())
    assert cli_results == raw  # every detection, bit for bit
    expected = [{**r, "category_id": new_class if i == fixed else r["category_id"]}
                for i, r in enumerate(cli_results) if i in set(kept_ids) | {accepted}]
    coco_gt = COCO()
    coco_gt.dataset = sub
    coco_gt.createIndex()
    page_dt, cli_dt = coco_gt.loadRes(exported), coco_gt.loadRes(expected)
    key = lambda a: (a["image_id"], a["category_id"], a["score"], tuple(a["bbox"]), a["segmentation"]["counts"])  # noqa: E731
    assert len(exported) == len(visible) and accepted not in visible and fixed in kept_ids
    assert [key(a) for a in page_dt.dataset["annotations"]] == [key(a) for a in cli_dt.dataset["annotations"]]
    assert sorted(p.name for p in shots.iterdir()) == ["1_reference_circle.png", "1_reference_square.png", "2_run.png",
                                                       "3_review_filtered.png", "3_review_rejected.png", "4_export.png"]
