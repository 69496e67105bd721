"""The contract test: every registered method and backbone."""

import pytest
import torch

from selfsup import backbones
from selfsup.augment import ViewConfig
from selfsup.config import load_config
from selfsup.methods import METHODS, BatchInfo, StepOutput

SMALL = {"resnet18": 0.125, "resnet34": 0.125, "resnet50": 0.125, "convnet": 0.25}


@pytest.mark.parametrize("name", backbones.names())
@pytest.mark.parametrize("cifar_stem", [True, False])
def test_backbone_contract(name, cifar_stem):
    m = backbones.create(name, width=SMALL.get(name, 0.25), cifar_stem=cifar_stem)
    m = m.to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    out = m(x)
    assert out.shape == (2, m.embed_dim)
    assert torch.isfinite(out).all()
    fmap = m.forward_map(x)  # dense pretext tasks decode from the spatial map
    assert fmap.shape == (2, m.embed_dim, 32 // m.map_stride, 32 // m.map_stride)


def test_width_multiplier_scales_embed_dim():
    assert backbones.create("resnet18", width=0.5).embed_dim == 256
    assert backbones.create("resnet50", width=0.25).embed_dim == 512
    with pytest.raises(ValueError, match="unknown backbone 'nope'; choose one of"):
        backbones.create("nope")


# paper-size heads are slow to build on CPU; the contract does not depend on their width
SMALL_HEADS = {"byol": {"hidden_dim": 64, "out_dim": 32},
               "simsiam": {"proj_dim": 64, "pred_hidden_dim": 16},
               "barlow_twins": {"proj_dim": 64}, "vicreg": {"proj_dim": 64},
               "mocov2": {"queue_size": 64, "bn_splits": 2},
               "swav": {"hidden_dim": 32, "out_dim": 16, "n_prototypes": 10, "n_local_crops": 2,
                        "queue_size": 16, "queue_start": 0.0},
               "dino": {"out_dim": 64, "hidden_dim": 32, "bottleneck_dim": 16, "n_local_crops": 2},
               "deepcluster_v2": {"hidden_dim": 32, "out_dim": 16, "n_prototypes": 4,
                                  "n_heads": 2},
               "mae": {"decoder_dim": 32, "decoder_depth": 1, "decoder_heads": 4},
               "ijepa": {"pred_dim": 16, "pred_depth": 1, "pred_heads": 2, "min_keep": 2},
               "selfpatch": {"out_dim": 64, "hidden_dim": 32, "bottleneck_dim": 16,
                             "n_local_crops": 2, "patch_out_dim": 32},
               "jigsaw": {"n_permutations": 10, "tile_dim": 16, "hidden_dim": 16},
               "igpt": {"resolution": 8, "n_colors": 8, "dim": 16, "depth": 2, "heads": 2}}
VIT_METHODS = {"mae", "selfpatch", "ijepa"}  # methods that need a ViT backbone
MEAN_POOL = {"ijepa"}  # ... built without a class token (model.pool=mean)
TILE_METHODS = {"jigsaw", "relative_position"}


SEMI = [n for n in METHODS.names() if getattr(METHODS.get(n), "semi_supervised", False)]
SELF = [n for n in METHODS.names() if n not in SEMI]


@pytest.mark.parametrize("name", SELF)
def test_method_contract(name):
    torch.manual_seed(0)
    cls = METHODS.get(name)
    cls.Config()  # paper defaults must construct
    cfg = cls.Config(**SMALL_HEADS.get(name, {}))
    if name in VIT_METHODS:
        backbone = backbones.create("vit_tiny", width=0.25, image_size=16, patch_size=4, depth=2,
                                    pool="mean" if name in MEAN_POOL else "cls")
    else:
        backbone = backbones.create("convnet", width=0.25)
    method = cls(backbone, cfg, ViewConfig(size=16))
    if name == "distillation":   # the teacher is an input of the run (a frozen network)
        method.set_teacher(backbones.create("convnet", width=0.5))
    method.setup(8)  # the loop calls this with the dataset size
    method.train()
    images = torch.randint(0, 256, (8, 3, 20, 20), dtype=torch.uint8)
    method.prepare(images)  # ... and this with a sample of the data
    batch = BatchInfo(torch.arange(8), torch.tensor([0, 1, 0, 1, 2, 2, -1, 0]))
    # a first step, so stateful methods (queues, memories, clusters) are in their steady state
    method.training_step(method.views(images), 0.0, batch)
    method.after_optimizer_step(0.0)
    views = method.views(images)
    if name in TILE_METHODS:  # [B, 9, C, t, t] grid cells, smaller than the view
        assert views[0].shape[:3] == (8, 9, 3) and views[0].shape[-1] < 16
    elif name == "igpt":      # quantises whatever size it is given down to its resolution
        assert views[0].shape[-2:] == (20, 20)
    else:
        assert views[0].shape[-2:] == (16, 16)
    assert all(not v.requires_grad for v in views)
    before = {k: v.clone() for k, v in method.state_dict().items()}
    out = method.training_step(views, 0.0, batch)
    assert isinstance(out, StepOutput)
    assert out.loss.dim() == 0 and torch.isfinite(out.loss)
    assert all(isinstance(v, float) for v in out.logs.values())
    out.loss.backward()  # training_step itself never calls backward
    # computing the loss changes no state except BN running statistics
    for k, v in method.state_dict().items():
        if "running" not in k and "num_batches" not in k:
            assert torch.equal(v, before[k]), k
    grads = [p.grad for p in method.encoder.parameters()]
    assert all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0
    frozen = {n: p for n, p in method.named_parameters() if not p.requires_grad}
    assert all(p.grad is None for p in frozen.values())  # targets get no gradient
    # one optimizer step, then the method's own update: frozen targets move toward the online net
    frozen_before = {n: p.detach().clone() for n, p in frozen.items()}
    torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.5).step()
    method.after_optimizer_step(0.5)
    if frozen:
        assert any(not torch.equal(frozen_before[n], p) for n, p in frozen.items())
    x = views[0] if views[0].dim() == 4 else torch.randn(8, 3, 16, 16)  # tiles: a full image
    feats = method.encoder(x)
    assert feats.shape == (8, getattr(method.encoder, "embed_dim", backbone.embed_dim))


@pytest.mark.parametrize("name", METHODS.names())
def test_method_config_keys_are_overridable(name):
    cfg = load_config(None, [f"method.name={name}"])
    assert type(cfg.method_config()) is METHODS.get(name).Config


@pytest.mark.parametrize("head", ["mlp", "linear", "none"])
def test_simclr_head_kinds(head):
    cfg = load_config(None, [f"method.head={head}"])
    method = METHODS.get("simclr")(backbones.create("convnet", width=0.25), cfg.method_config(),
                                   ViewConfig(size=16))
    views = method.views(torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8))
    assert torch.isfinite(method.training_step(views, 0.0).loss)
    n_linear = sum(isinstance(m, torch.nn.Linear) for m in method.head.modules())
    assert n_linear == {"mlp": 2, "linear": 1, "none": 0}[head]
    assert any(isinstance(m, torch.nn.BatchNorm1d) for m in method.head.modules()) == (head == "mlp")


@pytest.mark.parametrize("name", SEMI)
def test_semisup_method_contract(name):
    """Semi-supervised methods: the loop's batch is labeled images first (labels >= 0), then the
    unlabeled stream (label -1); views(images, batch); the trained network is ``model`` and the
    evaluated one its EMA copy (``encoder``)."""
    from selfsup.semisup import Classifier

    torch.manual_seed(0)
    cls = METHODS.get(name)
    cls.Config()
    # MPL's student waits student_wait_steps before it learns; the contract checks a learning step
    cfg = cls.Config(num_classes=3, **({"student_wait_steps": 0} if name == "mpl" else {}))
    method = cls(backbones.create("convnet", width=0.25), cfg)
    assert method.semi_supervised
    if name == "distill":
        method.set_teacher(Classifier(backbones.create("convnet", width=0.25), 3))
    if name == "noisy_student":
        import numpy as np

        probs = torch.softmax(torch.randn(8, 3), 1).numpy()
        method.set_pseudo_labels(8, np.arange(8), probs)
    method.setup(8)
    method.train()
    images = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8)
    batch = BatchInfo(torch.arange(8), torch.tensor([0, 1, 2, 0, -1, -1, -1, -1]))
    views = method.views(images, batch)
    assert all(not v.requires_grad and v.shape[-2:] == (16, 16) for v in views)
    before = {k: v.clone() for k, v in method.state_dict().items()}
    out = method.training_step(views, 0.5, batch)
    assert out.loss.dim() == 0 and torch.isfinite(out.loss)
    assert all(isinstance(v, float) for v in out.logs.values())
    out.loss.backward()
    for k, v in method.state_dict().items():
        if "running" not in k and "num_batches" not in k:
            assert torch.equal(v, before[k]), k
    grads = [p.grad for p in method.model.backbone.parameters()]
    assert all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0
    frozen = {n: p for n, p in method.named_parameters() if not p.requires_grad}
    assert frozen and all(p.grad is None for p in frozen.values())  # the EMA copy
    frozen_before = {n: p.detach().clone() for n, p in frozen.items()}
    torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.5).step()
    method.after_optimizer_step(0.5)
    assert any(not torch.equal(frozen_before[n], p) for n, p in frozen.items())
    assert method.encoder(views[0]).shape == (8, method.model.backbone.embed_dim)
    assert method.predict_logits(views[0]).shape == (8, 3)
