"""`python -m covlight.phantoms`: write a synthetic chest CT dataset (canonical or official download layout),
and/or a PNG montage of one phantom.

Examples:
  python -m covlight.phantoms --out demo_data/covid_ctseg                 # the 20 official case ids, demo size
  python -m covlight.phantoms --out /tmp/raw --layout official --cases 4  # as the Zenodo download, for importers
  python -m covlight.phantoms --out /tmp/msd --kind tumour --cases 10     # a non-COVID source
  python -m covlight.phantoms --montage docs/phantom.png --montage-case coronacases_002
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from covlight.data.synthetic import (
    KINDS,
    LAYOUTS,
    SIZES,
    case_ids,
    make_phantom,
    save_montage,
    write_phantom_dataset,
)
from covlight.errors import CovlightError, report_error


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m covlight.phantoms", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="dataset folder to write (new, empty, or holding the same phantoms)")
    parser.add_argument("--cases", type=int, default=20, help="the first N case ids (COVID: the 20 official ids)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--layout", choices=LAYOUTS, default="canonical")
    parser.add_argument("--kind", choices=KINDS, default="covid")
    parser.add_argument("--size", choices=tuple(SIZES), default="demo",
                        help="demo: 128x128 in-plane, 28-44 slices; small: 64x64, 16-24 slices (tests)")
    parser.add_argument("--montage", type=Path, metavar="FILE", help="write a PNG montage of one phantom")
    parser.add_argument("--montage-case", metavar="ID", help="case shown in the montage (default: the first case)")
    args = parser.parse_args(argv)
    if args.out is None and args.montage is None:
        parser.error("give --out DIR, --montage FILE, or both")
    try:
        cases = case_ids(args.kind, args.cases)
        if args.out is not None:
            write_phantom_dataset(args.out, cases, seed=args.seed, layout=args.layout, kind=args.kind, size=args.size)
            print(f"{len(cases)} {args.kind} phantoms ({args.layout} layout, {args.size} size, seed {args.seed}) "
                  f"in {args.out}")
        if args.montage is not None:
            case = args.montage_case or cases[0]
            phantom = make_phantom(case, args.seed, size=args.size, kind=args.kind)
            spacing = " x ".join(f"{s:.2f}" for s in phantom.spacing)
            title = (f"{case}: synthetic chest CT ({args.kind}, seed {args.seed}), {spacing} mm, "
                     f"radiological view (patient's right on the left)")
            print(f"montage of {case} in {save_montage(phantom, args.montage, title)}")
    except CovlightError as error:
        return report_error("covlight.phantoms", error)
    return 0


if __name__ == "__main__":
    sys.exit(main())
