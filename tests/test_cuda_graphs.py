"""MODEL.ATSS.CUDA_GRAPHS: inference replays the backbone and head from CUDA graphs cached per
input shape. On the CPU: the cache's bookkeeping (captures, hits, least-recently-used eviction,
recapture after parameters move), the eager fallback, and that the model's own inference path
gives exactly DenseDetector's output. With CUDA: replayed detections equal eager ones."""

import copy

import pytest
import torch
from detectron2.modeling import build_model
from test_amp import batch
from tiny_setup import small_cfg

from atss_d2.config_checks import ConfigError, check_atss_config
from atss_d2.modeling.cuda_graphs import CUDAGraphCache

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


class _FakeGraph:
    """Stands in for a captured graph: replay computes fn eagerly, tagged with its capture."""

    def __init__(self, fn, x, serial):
        self.fn, self.serial = fn, serial
        self.shape = tuple(x.shape)

    def replay(self, x):
        assert tuple(x.shape) == self.shape
        return self.fn(x), self.serial


class _Bookkeeping(CUDAGraphCache):
    """The cache with capture replaced by :class:`_FakeGraph`, replaying on any device."""

    def can_replay(self, x):
        return True

    def _capture(self, fn, x):
        return _FakeGraph(fn, x, self.captures)


def _double(x):
    return x * 2


def test_one_capture_per_shape_and_lru_eviction():
    cache = _Bookkeeping(max_graphs=2)
    a, b, c = torch.ones(1, 3, 4, 4), torch.ones(1, 3, 8, 4), torch.ones(2, 3, 4, 4)
    out, serial = cache(_double, a)
    assert torch.equal(out, a * 2) and serial == 0
    assert cache(_double, a + 1)[1] == 0  # same shape: replayed, not captured again
    assert cache(_double, b)[1] == 1
    assert cache.captures == 2 and len(cache) == 2
    cache(_double, a)  # a is now the most recently used, b the least
    assert cache(_double, c)[1] == 2  # a third shape: b is dropped
    assert len(cache) == 2
    assert cache(_double, a)[1] == 0  # a was kept
    assert cache(_double, b)[1] == 3  # b is captured again
    assert cache.captures == 4


def test_same_shape_other_layout_or_dtype_is_another_graph():
    cache = _Bookkeeping()
    x = torch.ones(1, 3, 4, 4)
    cache(_double, x)
    cache(_double, x.contiguous(memory_format=torch.channels_last))
    cache(_double, x.double())
    assert cache.captures == 3


def test_moved_parameters_drop_every_graph():
    cache = _Bookkeeping()
    weight = torch.ones(3)
    x = torch.ones(1, 3, 4, 4)
    cache(_double, x, params=[weight])
    cache(_double, x, params=[weight])
    weight.mul_(2)  # in place: same address, the graph stays
    cache(_double, x, params=[weight])
    assert cache.captures == 1
    moved = weight.clone()  # a new address, as after model.to() or model.half()
    cache(_double, x, params=[moved])
    assert cache.captures == 2 and len(cache) == 1


def test_copies_start_empty():
    cache = _Bookkeeping(max_graphs=3)
    cache(_double, torch.ones(1, 3, 4, 4))
    copied = copy.deepcopy(cache)
    assert len(copied) == 0 and copied.max_graphs == 3 and len(cache) == 1


def test_eager_where_a_graph_cannot_replay():
    cache = CUDAGraphCache()
    x = torch.ones(2, 2)
    with torch.no_grad():
        assert not cache.can_replay(x)  # on the CPU
        assert torch.equal(cache(_double, x), x * 2)
    assert len(cache) == 0 and cache.captures == 0
    if torch.cuda.is_available():
        assert not cache.can_replay(x.cuda())  # autograd recording
        with torch.no_grad():
            assert cache.can_replay(x.cuda())
            with torch.autocast("cuda"):
                assert not cache.can_replay(x.cuda())


def test_max_graphs_must_be_positive():
    with pytest.raises(ValueError, match="max_graphs"):
        CUDAGraphCache(max_graphs=0)


@pytest.mark.parametrize(
    "key, value", [("MODEL.ATSS.CUDA_GRAPHS_MAX_SHAPES", 0), ("MODEL.ATSS.CUDA_GRAPHS", "yes")]
)
def test_config_values_checked(key, value):
    cfg = small_cfg()
    cfg.MODEL.ATSS[key.rsplit(".", 1)[1]] = value
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        check_atss_config(cfg)


def _pair(device):
    """The same weights without and with CUDA_GRAPHS: (plain, graphed), in eval mode."""
    torch.manual_seed(0)
    plain = build_model(small_cfg(device=device)).eval()
    graphed = build_model(small_cfg("MODEL.ATSS.CUDA_GRAPHS", True, device=device)).eval()
    graphed.load_state_dict(plain.state_dict())
    with torch.no_grad():
        for model in (plain, graphed):
            model.head.cls_score.bias.zero_()  # p = 0.5 everywhere: many detections to compare
    return plain, graphed


def _inputs(device, seed=0):
    data = batch(seed)
    images = [{"image": x["image"].to(device), "height": 128, "width": 192} for x in data[:2]]
    images[1]["image"] = images[1]["image"][:, :, :80]  # another size in the same batch
    return images


def _assert_same_detections(expected, actual, exact):
    assert len(expected) == len(actual)
    for e, a in zip(expected, actual):
        e, a = e["instances"], a["instances"]
        assert len(e) > 0 and len(e) == len(a)
        assert a.image_size == e.image_size
        if exact:
            assert torch.equal(a.pred_boxes.tensor, e.pred_boxes.tensor)
            assert torch.equal(a.scores, e.scores)
        else:
            torch.testing.assert_close(a.pred_boxes.tensor, e.pred_boxes.tensor, rtol=0, atol=1e-3)
            torch.testing.assert_close(a.scores, e.scores, rtol=0, atol=1e-5)
        assert torch.equal(a.pred_classes, e.pred_classes)


def test_state_dict_and_cpu_detections_unchanged():
    plain, graphed = _pair("cpu")
    assert graphed.cuda_graphs is not None and plain.cuda_graphs is None
    assert list(graphed.state_dict()) == list(plain.state_dict())
    with torch.no_grad():
        expected, actual = plain(_inputs("cpu")), graphed(_inputs("cpu"))
    _assert_same_detections(expected, actual, exact=True)  # the override vs DenseDetector's
    assert len(graphed.cuda_graphs) == 0  # the CPU runs eagerly


@needs_cuda
def test_cuda_replay_gives_eager_detections():
    plain, graphed = _pair("cuda")
    with torch.no_grad():
        for seed in (0, 1):  # the second call replays the graph captured by the first
            _assert_same_detections(
                plain(_inputs("cuda", seed)), graphed(_inputs("cuda", seed)), exact=False
            )
    assert graphed.cuda_graphs.captures == 1
    with torch.no_grad():
        for model in (plain, graphed):  # in place, as an optimizer step or load_state_dict
            model.head.bbox_pred.weight.mul_(0.5)
        _assert_same_detections(plain(_inputs("cuda")), graphed(_inputs("cuda")), exact=False)
    assert graphed.cuda_graphs.captures == 1
    with torch.no_grad():
        for model in (plain, graphed):  # new parameter tensors, same values: recaptured
            model.to(torch.float64).to(torch.float32)
        _assert_same_detections(plain(_inputs("cuda")), graphed(_inputs("cuda")), exact=False)
    assert graphed.cuda_graphs.captures == 2
