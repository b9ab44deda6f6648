"""core/search/space.py: the search config as Tune's param space, and a trial's params back as
the candidate it builds (no Ray cluster)."""

from __future__ import annotations

import pytest

from alambic.config import PruningStep, SearchConfig
from alambic.errors import ConfigError
from alambic.search.space import Space


def space_of(**search) -> Space:
    return Space(SearchConfig.model_validate({"students": ["roberta-l4", "tinybert-4l"], **search}))


def test_grid_is_the_product_and_params_map_back_to_candidates():
    space = space_of(space={"temperature": {"choice": [2.0, 4.0]}, "alpha": 0.5,
                            "losses": {"choice": [["kd"], ["kd", "hidden-mse"]]}},
                     pruning=[[], [{"pruner": "ffn", "amount": 0.3}]], quantization=["none", "dynamic-int8"])
    params = space.param_space("grid")
    assert params["student"] == {"grid_search": ["roberta-l4", "tinybert-4l"]}
    assert params["pruning"] == {"grid_search": [0, 1]}
    assert params["distill"]["losses"] == {"grid_search": [0, 1]}  # lists go by index (Optuna takes no lists)
    assert "alpha" not in params["distill"]  # a fixed value is no dimension
    assert space.size() == 2 * 2 * 2 * 2 * 2
    candidate = space.candidate({"student": "tinybert-4l", "pruning": 1, "quantization": "dynamic-int8",
                                 "distill": {"temperature": 4.0, "losses": 1}})
    assert candidate.settings == {"temperature": 4.0, "alpha": 0.5, "losses": ["kd", "hidden-mse"]}
    assert candidate.pruning == (PruningStep(pruner="ffn", amount=0.3),) and candidate.pruning_label == "ffn:0.3"
    again = space.candidate({"student": "tinybert-4l", "pruning": 1, "quantization": "dynamic-int8",
                             "distill": {"temperature": 4.0, "losses": 1}})
    assert again.id == candidate.id and len(candidate.id) == 12


def test_random_and_optuna_spaces_sample_and_grid_refuses_ranges():
    from ray.tune.search.sample import Categorical, Float

    space = space_of(space={"learning_rate": {"loguniform": [1e-4, 1e-2]}, "temperature": {"grid": [1.0, 2.0]}})
    params = space.param_space("nsga2")
    assert isinstance(params["distill"]["learning_rate"], Float)
    assert isinstance(params["distill"]["temperature"], Categorical)  # Optuna knows no grid
    with pytest.raises(ConfigError, match=r"search.space.learning_rate: algorithm 'grid' needs choice"):
        space.param_space("grid")
