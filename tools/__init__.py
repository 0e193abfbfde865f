"""Tools beside the mixlab package: benchmarks, reproduction tables and curves, analysis reports.
They import mixlab; mixlab never imports them. Run them from the repository root, e.g.
`python -m tools.samplers.table --help`."""
