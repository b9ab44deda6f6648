"""Search: the Ray Tune search over students and compressions, the Pareto front and the selection.

Takes the search space of a run config; hands on one result row per candidate (results.parquet),
the candidates on the accuracy-size-latency front, and the selected candidate (selected.json).
"""
