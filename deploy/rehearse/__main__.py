"""`python -m deploy.rehearse`: rehearse the kind-cpu overlay and the example CLI Job as processes."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from deploy.rehearse.rehearsal import DEFAULT_IMAGES, EXAMPLE_JOBS, Options, Rehearsal


def main(argv: list[str] | None = None) -> int:
    """Parse the flags, run the rehearsal; exit 0 passed, 1 failed, 2 bad flags."""
    parser = argparse.ArgumentParser(prog="python -m deploy.rehearse", description=__doc__.split(":", 1)[1].strip())
    parser.add_argument("--root", type=Path, default=Path.cwd(),
                        help="repository root holding deploy/ and docker/ (default: the current folder)")
    parser.add_argument("--overlay", default="kind-cpu", help="overlay under deploy/k8s/overlays (default: kind-cpu)")
    parser.add_argument("--job", action="append", dest="jobs",
                        help="Job manifest to run once the services are ready (repeatable; default: "
                             f"{', '.join(EXAMPLE_JOBS)})")
    parser.add_argument("--images", type=int, default=DEFAULT_IMAGES,
                        help=f"shapes-world probe images for the CLI Job (default: {DEFAULT_IMAGES}, the demo's "
                             f"CI size)")
    parser.add_argument("--work", type=Path, help="folder for volumes, logs and data (default: a new temp folder, "
                                                  "removed when the rehearsal passes)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder after a pass")
    parser.add_argument("--job-timeout", type=float, default=1800.0, help="seconds a Job may run (default 1800)")
    parser.add_argument("--min-final-top1", type=float, default=0.9,
                        help="lowest final-layer top-1 accepted for the CLI Job's labels "
                             "(default 0.9, the demo's goal)")
    parser.add_argument("--json-report", type=Path, help="also write the outcome as JSON here")
    args = parser.parse_args(argv)
    if args.images < 10:
        parser.error("--images must be at least 10")
    root = args.root.resolve()
    if not (root / "deploy" / "k8s").is_dir():
        parser.error(f"{root} has no deploy/k8s: pass the repository root with --root")
    options = Options(root=root, overlay=args.overlay, example_jobs=tuple(args.jobs or EXAMPLE_JOBS),
                      images=args.images, work=args.work, keep=args.keep, job_timeout=args.job_timeout,
                      min_final_top1=args.min_final_top1, json_report=args.json_report)
    return Rehearsal(options, out=lambda line: print(line, flush=True)).run()


if __name__ == "__main__":
    sys.exit(main())
