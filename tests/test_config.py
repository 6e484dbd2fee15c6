import pytest

from palu import CalibrationConfig, DecompositionConfig, LatentQuantConfig, PaluConfig, RankSearchConfig


@pytest.mark.parametrize("ratio", [0.0, -0.1, 1.01])
def test_ratio_outside_unit_interval_is_rejected(ratio):
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        RankSearchConfig(param_ratio_target=ratio)


def test_bad_values_are_rejected():
    with pytest.raises(ValueError, match="bits"):
        LatentQuantConfig(bits=5)
    with pytest.raises(ValueError, match="clip_ratio"):
        LatentQuantConfig(clip_ratio=0)
    with pytest.raises(ValueError):
        RankSearchConfig(method="random")
    with pytest.raises(ValueError):
        DecompositionConfig(method="qr")
    with pytest.raises(ValueError, match="seqlen"):
        CalibrationConfig(seqlen=0)
    with pytest.raises(ValueError, match="rank"):
        PaluConfig(head_group_size=1, ranks={"0": {"k": [0], "v": [4]}})


@pytest.mark.parametrize("cfg", [
    CalibrationConfig("x.txt", 3, 2, 64, 7),
    RankSearchConfig("fisher", 0.7, 16),
    DecompositionConfig("svd", 2, 1e-4),
    LatentQuantConfig(3, 16, True, 0.9, True, 8),
    PaluConfig(head_group_size=2, ranks={"0": {"k": [8, 4], "v": [4, 4]}}, hadamard_fused=True, cache_mode="simulate"),
])
def test_json_roundtrip(cfg):
    import json

    assert type(cfg).from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_unknown_keys_are_named():
    with pytest.raises(ValueError, match="unknown keys"):
        LatentQuantConfig.from_dict({"bits": 4, "nbits": 4})
