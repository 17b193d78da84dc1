"""MODEL.ATSS.CHANNELS_LAST: weights and input batch in the channels-last memory format, the same
losses, gradients and detections as the default layout."""

import torch
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage
from test_amp import batch
from tiny_setup import small_cfg


def build_pair():
    """The same weights in both layouts: (default model, channels-last model)."""
    torch.manual_seed(0)
    plain = build_model(small_cfg())
    cl = build_model(small_cfg("MODEL.ATSS.CHANNELS_LAST", True))
    cl.load_state_dict(plain.state_dict())
    return plain, cl


def is_channels_last(t: torch.Tensor) -> bool:
    """Channels-last and not the default layout (for a tensor with C > 1 and H, W not both 1,
    where the two layouts differ)."""
    return t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()


def spatial_conv_weights(model):
    """The weights of the convolutions with kernels larger than 1x1."""
    return [
        m.weight
        for m in model.modules()
        if isinstance(m, torch.nn.Conv2d) and m.weight[0, 0].numel() > 1
    ]


def test_weights_and_input_channels_last():
    plain, cl = build_pair()
    convs = spatial_conv_weights(cl)
    assert len(convs) > 10 and all(is_channels_last(w) for w in convs)  # loading kept the layout
    assert not any(is_channels_last(w) for w in spatial_conv_weights(plain))
    seen = []
    cl.backbone.register_forward_pre_hook(lambda m, args: seen.append(is_channels_last(args[0])))
    cl.eval()
    with torch.no_grad():
        cl([{"image": batch()[0]["image"]}])
    assert seen == [True]


def test_same_losses_gradients_and_detections():
    plain, cl = build_pair()
    data = batch()
    losses = []
    for model in (plain, cl):
        model.train()
        with EventStorage():
            out = model(data)
        sum(out.values()).backward()
        losses.append({k: v.item() for k, v in out.items()})
    for name in losses[0]:
        assert abs(losses[0][name] - losses[1][name]) <= 1e-5 * abs(losses[0][name]), name
    compared = 0
    for (name, p), q in zip(plain.named_parameters(), cl.parameters()):
        assert (p.grad is None) == (q.grad is None), name  # frozen stages have none
        if p.grad is not None:
            assert torch.allclose(p.grad, q.grad, rtol=1e-3, atol=1e-6), name
            compared += 1
    assert compared > 20

    # Raise the classification bias so that the random head detects something.
    outputs = []
    for model in (plain, cl):
        model.eval()
        with torch.no_grad():
            model.head.cls_score.bias.fill_(0.0)
            outputs.append(model([{"image": x["image"]} for x in data]))
    for a, b in zip(*outputs):
        a, b = a["instances"], b["instances"]
        assert len(a) > 0 and len(a) == len(b)
        assert torch.equal(a.pred_classes, b.pred_classes)
        assert torch.allclose(a.pred_boxes.tensor, b.pred_boxes.tensor, atol=1e-3)
        assert torch.allclose(a.scores, b.scores, atol=1e-5)
