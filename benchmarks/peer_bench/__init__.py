"""The peers benchmark's parts (``benchmarks/peers.py``): alambic's side of each comparison here,
each peer's side in ``side/``, run by that peer's own Python (:mod:`.venvs`)."""
