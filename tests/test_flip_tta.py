"""Flip test-time augmentation (``eval.flip_tta``): the logits of an image and of its mirror image,
averaged, in every evaluation of the run and in the saved model (predict, export)."""

import json

import numpy as np
import pytest
import torch
from torch import nn

from selfsup.semisup import Classifier


class _Backbone(nn.Module):
    """Not mirror-symmetric on purpose: a linear map of the flattened pixels."""

    embed_dim = 5

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3 * 4 * 4, 5)

    def forward(self, x):
        return self.lin(x.flatten(1))


def test_flip_tta_logits_are_the_mean_over_the_image_and_its_mirror():
    torch.manual_seed(0)
    model = Classifier(_Backbone(), 3).eval()
    x = torch.randn(6, 3, 4, 4)
    plain = model(x)
    model.flip_tta = True
    with torch.no_grad():
        got = model(x)
    for i in range(len(x)):   # one image at a time, the mirror written out column by column
        mirror = torch.stack([x[i, :, :, 3 - j] for j in range(4)], dim=-1)
        want = (model.fc(model.backbone(x[i:i + 1])) + model.fc(model.backbone(mirror[None]))) / 2
        assert torch.allclose(got[i], want[0], atol=1e-6)
    assert not torch.allclose(got, plain, atol=1e-3)     # the mirror changed something
    model.train()                                         # training calls never average
    assert torch.allclose(model(x), plain, atol=1e-6)


def test_accuracy_with_flip_tta_leaves_the_model_as_it_was():
    """A teacher in eval mode that labels unlabeled images must not start averaging because an
    evaluation asked for it."""
    from selfsup.data import ImageDataset
    from selfsup.semisupervised import accuracy

    torch.manual_seed(0)
    model = Classifier(_Backbone(), 3).eval()
    rng = np.random.default_rng(0)
    ds = ImageDataset(rng.integers(0, 256, (20, 4, 4, 3), dtype=np.uint8),
                      rng.integers(0, 3, 20), ["a", "b", "c"], [str(i) for i in range(20)], "t")
    accuracy(model, ds, "cpu", flip_tta=True)
    assert model.flip_tta is False


@pytest.fixture(scope="module")
def tta_run(tmp_path_factory):
    from selfsup.config import load_config
    from selfsup.semisupervised import train_semisup

    root = tmp_path_factory.mktemp("tta")
    cfg = load_config("fixmatch_digits", ["method.name=supervised", "train.steps=6",
                                          "train.eval_every=6", "train.progress=false",
                                          "data.labels_per_class=5", "eval.flip_tta=true"])
    run, summary = train_semisup(cfg, root / "run")
    return run, summary


def test_flip_tta_is_saved_with_the_model_and_used_by_predict_and_export(tta_run, tmp_path):
    import onnxruntime as ort
    from safetensors import safe_open

    from selfsup.cli import main
    from selfsup.data import load_dataset
    from selfsup.semisupervised import accuracy, load_classifier

    run, summary = tta_run
    with safe_open(str(run / "model.safetensors"), "pt") as f:
        assert f.metadata()["flip_tta"] == "true"
    model, _ = load_classifier(run)
    assert model.flip_tta
    test = load_dataset("digits", split="test", image_size=16)
    # the run's own test accuracy is the averaged model's
    assert accuracy(model, test, "cpu") == pytest.approx(summary["test_acc_final"])
    out = tmp_path / "export"
    assert main(["export", str(run), "-o", str(out)]) == 0
    rep = json.loads((out / "export.json").read_text())
    assert rep["ok"] and rep["same_predictions"]
    pre = json.loads((out / "preprocess.json").read_text())
    assert "mirror" in pre["test_time_augmentation"]
    # the graph itself averages: its logits are the mean of the plain model's on x and mirror(x)
    x = torch.from_numpy(test.images[:8]).permute(0, 3, 1, 2).float() / 255
    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    onnx_logits = sess.run(None, {"image": x.numpy()})[0]
    model.flip_tta = False
    mean, std = torch.tensor(pre["mean"]).view(1, 3, 1, 1), torch.tensor(pre["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        want = (model((x - mean) / std) + model((x.flip(-1) - mean) / std)) / 2
    assert np.abs(onnx_logits - want.numpy()).max() < 1e-4


def test_flip_tta_refused_for_a_method_with_its_own_inference(tmp_path):
    from selfsup.config import ConfigError, load_config
    from selfsup.semisupervised import train_semisup

    cfg = load_config("fixmatch_digits", ["method.name=sla", "train.steps=2",
                                          "train.progress=false", "data.labels_per_class=2",
                                          "eval.flip_tta=true"])
    with pytest.raises(ConfigError, match="eval.flip_tta"):
        train_semisup(cfg, tmp_path / "sla")


def test_fit_averages_over_mirrors_only_when_it_trains_with_them():
    from selfsup.fitplan import Choices, _stage_configs

    c = Choices("cpu", 32, "convnet", 1.0, "simclr", 10, 32, "freematch", 10, 8, 4.0, 0.2,
                flip_tta=True)
    assert _stage_configs(c, [], 0)[1].eval.flip_tta
    assert not _stage_configs(c, ["augment.flip_p=0"], 0)[1].eval.flip_tta      # digits, text
    assert not _stage_configs(c, ["eval.flip_tta=false"], 0)[1].eval.flip_tta
    c.semisup_method = "sla"                         # its own inference: never averaged
    assert not _stage_configs(c, [], 0)[1].eval.flip_tta
    c.semisup_method, c.flip_tta = "freematch", False                  # a resumed older fit
    assert not _stage_configs(c, [], 0)[1].eval.flip_tta
