"""model.init: weights from a local file (safetensors, PyTorch state dicts with trainer prefixes,
a selfsup run folder) with shapes checked, and timm:/torchvision: backbones when installed."""

import importlib.util

import pytest
import torch
from safetensors.torch import save_file

from selfsup.backbones import build
from selfsup.backbones.external import InitError, load_init
from selfsup.cli import main
from selfsup.config import load_config
from selfsup.pretrain import build_backbone


def _same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_init_from_safetensors_and_prefixed_state_dicts(tmp_path):
    src = build("convnet", 0.5)
    with torch.no_grad():
        for p in src.parameters():
            p.add_(1.0)
    save_file(src.state_dict(), str(tmp_path / "w.safetensors"))
    torch.save({"state_dict": {f"module.backbone.{k}": v for k, v in src.state_dict().items()},
                "epoch": 3}, tmp_path / "ckpt.pt")
    for f in ("w.safetensors", "ckpt.pt"):
        dst = build("convnet", 0.5)
        assert not _same(src, dst)
        info = load_init(dst, tmp_path / f)
        assert _same(src, dst) and info["tensors"] == len(src.state_dict())
    # through the config: the run's backbone starts from the file
    cfg = load_config("simclr_digits", ["model.width=0.5", f"model.init={tmp_path / 'ckpt.pt'}"])
    assert _same(src, build_backbone(cfg))


def test_mismatched_weights_are_one_clear_error(tmp_path):
    save_file(build("convnet", 0.5).state_dict(), str(tmp_path / "half.safetensors"))
    with pytest.raises(InitError, match=r"another shape .*features\.0\.weight.*model\.width"):
        load_init(build("convnet", 1.0), tmp_path / "half.safetensors")
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    with pytest.raises(InitError, match="not a readable"):
        load_init(build("convnet", 1.0), tmp_path / "junk.pt")
    with pytest.raises(InitError, match="no such file"):
        load_init(build("convnet", 1.0), tmp_path / "nope.safetensors")


def test_cli_says_what_is_wrong_in_one_line(tmp_path, capsys):
    save_file(build("convnet", 0.5).state_dict(), str(tmp_path / "half.safetensors"))
    rc = main(["pretrain", "-p", "simclr_digits", "-o", str(tmp_path / "r"), "train.steps=2",
               f"model.init={tmp_path / 'half.safetensors'}", "train.progress=false"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "model.init=" in err[0] and "another shape" in err[0]


@pytest.mark.parametrize("lib", ["timm", "torchvision"])
def test_external_backbones(lib):
    if importlib.util.find_spec(lib) is None:
        with pytest.raises(InitError, match=f"optional library {lib}.*pip install {lib}"):
            build(f"{lib}:resnet18")
        pytest.skip(f"{lib} is not installed (optional): only its clear message is tested")
    net = build(f"{lib}:resnet18", image_size=32)
    assert net(torch.zeros(2, 3, 32, 32)).shape == (2, net.embed_dim)
