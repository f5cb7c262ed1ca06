"""``sam2-vitplug app``: a local web page for the whole few-shot job on a folder of images.

Make references by clicking (SAM2 shows each mask at once), run ``fewshot memory`` + ``fewshot
run`` on all or some images with a progress bar, review the detections (score filter, accept,
reject, fix a class) and export COCO files. Open the printed address in a browser on this
machine; files go to --out."""

from __future__ import annotations

import argparse
import sys
import threading
from pathlib import Path

from ..encoders.sources import ENCODER_SOURCES_HELP


def cmd_app(args: argparse.Namespace) -> int:
    from ..app.jobs import Context
    from ..app.server import App, serve
    from ..devices import default_device

    images = Path(args.images)
    if not images.is_dir():
        raise FileNotFoundError(f"--images '{args.images}' is not a directory; pass the folder of your images")
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be in 0..65535, got {args.port}")
    if not 0 < args.max_upload_mb <= 1024:
        raise ValueError(f"--max-upload-mb must be in (0, 1024], got {args.max_upload_mb}")
    out = Path(args.out) if args.out else images.parent / f"{images.resolve().name}_app"
    ctx = Context(images.resolve(), out.resolve(), args.sam2_config, args.sam2_ckpt, tuple(args.sam2_override),
                  args.device or default_device())
    app = App(ctx, args.encoder, int(args.max_upload_mb * (1 << 20)))
    try:
        server = serve(app, args.host, args.port)
    except OSError as err:
        raise OSError(f"cannot listen on {args.host}:{args.port} ({err.strerror or err}); pick another --port") from None
    if not args.no_preload:  # the first click should not wait for the model build
        threading.Thread(target=app.segmenter.preload, daemon=True, name="sam2-preload").start()
    host, port = server.server_address[:2]
    shown = f"[{host}]" if ":" in str(host) else host
    print(f"sam2-vitplug app: open http://{shown}:{port}/ (images {ctx.images}, files in {ctx.out}; Ctrl-C stops)",
          flush=True)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: listening on {args.host}: anyone who can reach this machine can use the page", file=sys.stderr)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr)
    finally:
        server.server_close()
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``app``."""
    p = subparsers.add_parser("app", help="local web page: make references by clicking, run few-shot, review, export",
                              description=__doc__)
    p.add_argument("--images", required=True, help="folder of the images (references and targets; uploads go here)")
    p.add_argument("--sam2-config", required=True, help="SAM2 config or packaged model (e.g. sam2_vit_demo)")
    p.add_argument("--sam2-ckpt", default=None, help="SAM2 checkpoint for --sam2-config")
    p.add_argument("--sam2-override", action="append", default=[], metavar="KEY=VALUE",
                   help="extra Hydra override for the SAM2 config")
    p.add_argument("--encoder", default=None, help="matcher encoder for the bank (editable in the page); "
                                                   + ENCODER_SOURCES_HELP)
    p.add_argument("--out", default=None, help="folder for references.json, bank, results and export/ "
                                               "(default: <images>_app next to the image folder)")
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=7860, help="port (0: any free port)")
    p.add_argument("--device", default=None, help="cuda, mps or cpu (default: the best available)")
    p.add_argument("--max-upload-mb", type=float, default=20.0, help="largest image the page may upload, in MiB")
    p.add_argument("--no-preload", action="store_true", help="build SAM2 on the first click, not at start")
    p.set_defaults(func=cmd_app)
