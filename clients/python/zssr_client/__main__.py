"""`python -m zssr_client upscale IN OUT`: upscale one image through the API, with a progress bar on stderr.

Exit status 0 on success; 1 with one line naming the error (the API's code and message, or why the API could not
be reached); 2 for bad arguments; 130 when interrupted (the job is canceled first).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Sequence, TextIO

from zssr_client import Client, ClientError, JobFailed

FORMATS = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".webp": "webp"}
BAR_WIDTH = 30


class Interrupted(Exception):
    """Ctrl-C while waiting: the job was canceled."""


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m zssr_client", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    upscale = commands.add_parser("upscale", help="upscale IN into OUT through the API")
    upscale.add_argument("input", metavar="IN", type=Path)
    upscale.add_argument("output", metavar="OUT", type=Path)
    upscale.add_argument("--api", default=os.environ.get("ZSSR_API_URL", "http://127.0.0.1:8000"),
                         help="the API's base URL (default: $ZSSR_API_URL or http://127.0.0.1:8000)")
    upscale.add_argument("--key", default=os.environ.get("ZSSR_API_KEY"), help="API key (default: $ZSSR_API_KEY)")
    upscale.add_argument("--scale", type=float, default=2.0)
    upscale.add_argument("--method", choices=("zssr", "bicubic"))
    upscale.add_argument("--preset", choices=("fast", "balanced", "paper"))
    upscale.add_argument("--kernel", choices=("bicubic", "estimate"))
    upscale.add_argument("--output-format", choices=("png", "jpeg", "webp"),
                         help="default: from OUT's extension (.png, .jpg, .webp), else png")
    upscale.add_argument("--seed", type=int)
    upscale.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait for the job (default 3600)")
    upscale.add_argument("--max-retries", type=int, default=5,
                         help="retries of a request after a lost connection, a 429 or a 503 (default 5)")
    return parser.parse_args(argv)


class ProgressBar:
    """One line on `stream`, redrawn in place: the status, a bar of the training fraction, the step."""

    def __init__(self, stream: TextIO):
        self.stream, self.drawn = stream, 0

    def __call__(self, progress: dict[str, Any]) -> None:
        fraction = float(progress.get("fraction") or 0.0)
        filled = round(fraction * BAR_WIDTH)
        phase = progress.get("phase") or progress.get("status", "")
        steps = f" {progress['step']}/{progress['total_steps']}" if progress.get("total_steps") else ""
        line = f"[{'#' * filled}{'-' * (BAR_WIDTH - filled)}] {fraction:4.0%} {phase}{steps}"
        self.stream.write("\r" + line.ljust(self.drawn))
        self.stream.flush()
        self.drawn = len(line)

    def end(self) -> None:
        if self.drawn:
            self.stream.write("\n")
            self.stream.flush()
            self.drawn = 0


def upscale(args: argparse.Namespace, bar: ProgressBar) -> None:
    output_format = args.output_format or FORMATS.get(args.output.suffix.lower())
    with Client(args.api, api_key=args.key, max_retries=args.max_retries) as client:
        job = client.submit(args.input, scale=args.scale, method=args.method, preset=args.preset,
                            kernel=args.kernel, output_format=output_format, seed=args.seed)
        try:
            job = client.wait(job["id"], timeout=args.timeout, progress=bar)
        except KeyboardInterrupt:
            bar.end()
            client.cancel(job["id"])  # nobody will fetch its result: free the worker
            raise Interrupted(job["id"]) from None
        bar.end()
        if job["status"] != "succeeded":
            raise JobFailed(job)
        args.output.write_bytes(client.result(job["id"]))


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    bar = ProgressBar(sys.stderr)
    try:
        upscale(args, bar)
    except Interrupted as exc:
        print(f"zssr_client: interrupted; canceled the job {exc}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("zssr_client: interrupted", file=sys.stderr)
        return 130
    except (ClientError, OSError) as exc:
        bar.end()
        print(f"zssr_client: error: {describe(exc)}", file=sys.stderr)
        return 1
    return 0


def describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.filename is not None:
        return f"{exc.filename}: {exc.strerror or exc}"
    return " ".join(str(exc).split())  # one line whatever the message holds


if __name__ == "__main__":
    sys.exit(main())
