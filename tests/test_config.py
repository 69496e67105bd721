import pytest

from selfsup.config import ConfigError, load_config, preset_names


def test_defaults_preset_and_overrides():
    cfg = load_config("simclr_digits", ["optim.lr=0.5", "train.steps=7", "method.temperature=0.3",
                                        "augment.crop=false", "train.threads=null"])
    assert cfg.optim.lr == 0.5 and cfg.train.steps == 7 and cfg.augment.crop is False
    assert cfg.method_config().temperature == 0.3
    assert cfg.data.dataset == "digits"  # from the preset
    assert isinstance(load_config(None, ["optim.lr=1"]).optim.lr, float)
    assert load_config(None, ["optim.weight_decay=5e-4"]).optim.weight_decay == 5e-4


def test_unknown_keys_list_valid_keys():
    with pytest.raises(ConfigError, match=r"unknown key\(s\) optim\.lrr.*valid keys in 'optim':.*lr"):
        load_config(None, ["optim.lrr=0.1"])
    with pytest.raises(ConfigError, match=r"method\.temp.*valid keys in 'method':.*temperature"):
        load_config(None, ["method.temp=0.1"])
    with pytest.raises(ConfigError, match="unknown section 'optimizer'"):
        load_config(None, ["optimizer.lr=0.1"])
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(None, ["lr0.1"])
    with pytest.raises(ConfigError, match="train.steps: expected int"):
        load_config(None, ["train.steps=many"])
    with pytest.raises(ValueError, match="unknown method 'simclrr'; choose one of: .*simclr"):
        load_config(None, ["method.name=simclrr"])


def test_bundled_presets_all_load():
    assert {"simclr_digits", "simclr_cifar10_cpu", "simclr_cifar10"} <= set(preset_names())
    for name in preset_names():
        load_config(name)
    with pytest.raises(ConfigError, match="bundled: "):
        load_config("nope")


def test_switching_method_drops_the_presets_method_keys():
    cfg = load_config("simclr_digits", ["method.name=byol", "method.out_dim=64"])
    assert cfg.method == {"name": "byol", "out_dim": 64}
    assert load_config("simclr_digits").method_config().temperature == 0.2


def test_method_keys_given_before_the_method_switch_are_kept():
    """Only the preset's keys are dropped: the overrides' own method keys count in any order
    (a benchmark listing shared method keys before method.name lost them silently)."""
    before = load_config("dino_cifar10_cpu", ["method.out_dim=1024", "method.n_local_crops=0",
                                              "method.name=selfpatch"])
    after = load_config("dino_cifar10_cpu", ["method.name=selfpatch", "method.out_dim=1024",
                                             "method.n_local_crops=0"])
    assert before.method == after.method == {"name": "selfpatch", "out_dim": 1024,
                                             "n_local_crops": 0}
    assert before.method_config().out_dim == 1024
    same = load_config("dino_cifar10_cpu", ["method.out_dim=1024", "method.name=dino"])
    assert same.method["out_dim"] == 1024 and len(same.method) > 2   # same method: preset kept
