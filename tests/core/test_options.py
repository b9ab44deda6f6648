"""core/options.py: given plugin options checked against an ``Options`` dataclass (unknown names get
a did-you-mean, removed ones their reason), and the helpers of an ``Options.__post_init__``."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from alambic.errors import AlambicError
from alambic.options import NoOptions, check_names, choice, parse_set, set_fields, validated


@dataclass(frozen=True)
class Opts:
    method: str = "minmax"
    per_channel: bool = False

    def __post_init__(self) -> None:
        choice("quantizer 'toy'", "method", self.method, ("minmax", "entropy"))
        set_fields(self, per_channel=bool(self.per_channel))


def test_given_options_become_the_options_dataclass():
    assert validated("quantizer 'toy'", Opts) == Opts()
    assert validated("quantizer 'toy'", Opts, {"method": "entropy", "per_channel": 1}) == Opts("entropy", True)
    given = Opts("entropy")
    assert validated("quantizer 'toy'", Opts, given) is given  # already validated
    assert validated("exporter 'bare'", NoOptions, None) == NoOptions()


def test_unknown_and_removed_options_say_what_to_do():
    with pytest.raises(AlambicError, match=r"^quantizer 'toy': unknown option 'per_chanel' "
                                           r"\(did you mean 'per_channel'\?\); allowed: method, per_channel$"):
        validated("quantizer 'toy'", Opts, {"per_chanel": True})
    with pytest.raises(AlambicError, match=r"unknown option 'x'; allowed: \(none\)"):
        validated("exporter 'bare'", NoOptions, {"x": 1})
    with pytest.raises(AlambicError, match="^quantizer 'toy': option 'symmetric' was removed: it is always on$"):
        check_names("quantizer 'toy'", Opts, ["method", "symmetric"], {"symmetric": "it is always on"})
    check_names("pruner 'toy'", Opts, ["method"])  # known names pass


def test_choice_and_set_fields_in_post_init():
    assert Opts(per_channel=1).per_channel is True  # normalised although the dataclass is frozen
    with pytest.raises(AlambicError, match=r"quantizer 'toy': method must be one of minmax, entropy, "
                                           r"got 'entropi' \(did you mean 'entropy'\?\)"):
        Opts("entropi")


def test_the_plugin_bases_share_one_no_options():
    from alambic.compress.pruning import Pruner
    from alambic.compress.quantization import Quantizer
    from alambic.ship.exporter import Exporter
    from alambic.train.losses import DistillLoss

    assert Pruner.Options is Quantizer.Options is Exporter.Options is DistillLoss.Options is NoOptions


def test_parse_set_reads_yaml_values():
    assert parse_set(["temperature=2", "losses=[kd, hidden-mse]", "layer_map=null"]) == {
        "temperature": 2, "losses": ["kd", "hidden-mse"], "layer_map": None}
    with pytest.raises(AlambicError, match="expected key=value"):
        parse_set(["temperature"])
