"""Reports of many runs beside the published baselines (`python -m covlight.report RUNS... --out DIR`).

`baselines` (the published nnU-Net numbers), `collect` (finished runs and what is missing), `tables`
(aggregation, mapping onto the published rows, Markdown and CSV), `plots` (box plots). Nothing is imported
here, so reading the baselines stays cheap.
"""
