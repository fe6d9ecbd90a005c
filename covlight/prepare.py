"""`python -m covlight.prepare <dataset> --src PATH --dest ROOT`: import an official download, with checks.

Writes <dest>/<dataset name>/{images,labels,dataset.json} in the canonical layout (RAS+, images 0..255, labels
0 background, 1 left lung, 2 right lung, 3 infection/lesion). Reruns on the same source skip finished cases and
resume an interrupted import; replacing a dataset built from another source needs --force.

Examples:
  python -m covlight.prepare covid19_ct_seg --src ~/Downloads/zenodo_3757476 --dest data
  python -m covlight.prepare mosmed --src ~/Downloads/COVID19_1110 --dest data
  python -m covlight.prepare structseg --src ~/Downloads/StructSeg2019 --dest data
  python -m covlight.prepare nsclc --src ~/Downloads/nsclc --dest data
  python -m covlight.prepare msd_lung --src ~/Downloads/Task06_Lung.tar --dest data
  python -m covlight.prepare folder --src my_scans --name my_set --images "ct/*.nii.gz" \\
      --labels "masks/*.nii.gz" --label-map 1:3 --intensity hu --dest data
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from covlight.data.importers import IMPORTERS
from covlight.data.importers.archives import Staging
from covlight.data.importers.runner import run_plan
from covlight.errors import report_error, user_mistake


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m covlight.prepare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sources = parser.add_subparsers(dest="dataset", required=True, metavar="DATASET")
    for name, module in IMPORTERS.items():
        sub = sources.add_parser(name, help=module.HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
        sub.add_argument("--src", type=Path, required=True, help="the download: a folder or an archive")
        sub.add_argument("--dest", type=Path, default=Path(os.environ.get("COVLIGHT_DATA", "data")),
                         help="root of the canonical datasets (default: $COVLIGHT_DATA or data)")
        sub.add_argument("--force", action="store_true",
                         help="replace a dataset that was imported from a different source or with other options")
        module.add_arguments(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.src = args.src.expanduser()
    args.dest = args.dest.expanduser()
    if not args.src.exists():
        return report_error("covlight.prepare", f"--src {args.src} does not exist")
    try:
        with Staging(args.dest) as staging:
            for plan in IMPORTERS[args.dataset].plans(args, staging):
                run_plan(plan, args.dest, force=args.force)
    except Exception as error:
        mistake = user_mistake(error)  # a CovlightError, or a full disk met by any write
        if mistake is None:
            raise
        return report_error("covlight.prepare", mistake)
    return 0


if __name__ == "__main__":
    sys.exit(main())
