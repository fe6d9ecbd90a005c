"""Synthetic chest CT phantoms (HU) with canonical labels, for the demo, the tests and importer tests.

By what it draws: `anatomy` (body wall, skeleton, mediastinum, lungs, airways, vessels), `lesions` (COVID-19,
tumour, effusion), `scan` (the HU image with scanner blur and noise, and the labels), `datasets` (canonical and
official-download folders on disk), `montage` (a PNG of one phantom).

The README montage: `python -m covlight.phantoms --montage docs/phantom.png --montage-case coronacases_002`.
"""

from covlight.data.synthetic.anatomy import SIZES
from covlight.data.synthetic.datasets import (
    LAYOUTS,
    case_ids,
    lungs_with_lesions,
    official_file_stem,
    write_phantom_dataset,
)
from covlight.data.synthetic.lesions import KINDS
from covlight.data.synthetic.montage import save_montage
from covlight.data.synthetic.scan import Phantom, make_phantom

__all__ = ["KINDS", "LAYOUTS", "SIZES", "Phantom", "case_ids", "lungs_with_lesions", "make_phantom",
           "official_file_stem", "save_montage", "write_phantom_dataset"]
