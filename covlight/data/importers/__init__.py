"""Importers of the official downloads into canonical dataset folders (`python -m covlight.prepare`).

Each source module has NAME, HELP, `add_arguments(parser)` and `plans(args, staging) -> [DatasetPlan]`; the shared
runner (`runner.run_plan`) writes the datasets.
"""

from covlight.data.importers import covid19_ct_seg, folder, mosmed, msd_lung, nsclc, structseg

IMPORTERS = {module.NAME: module for module in (covid19_ct_seg, mosmed, structseg, nsclc, msd_lung, folder)}
