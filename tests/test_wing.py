import pytest
import torch

from core.wing import FAN, get_preds_fromhm, preprocess, shift


def test_fan_masks_shapes_and_ranges(random_wing):
    fan = FAN(fname_pretrained=random_wing).eval()
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    masks = fan.get_heatmap(x)
    assert len(masks) == 2
    for m in masks:
        assert m.shape == (2, 1, 256, 256)
        assert m.min() >= 0 and m.max() <= 1
    # mask 2 (eyes and nose) is mask 1 with channels removed: never larger before clamping
    assert torch.all(masks[1] <= masks[0] + 1e-6)
    raw = fan.get_heatmap(x, b_preprocess=False)
    assert raw.shape == (2, 98, 64, 64)


def test_landmarks_shape_and_scale(random_wing):
    fan = FAN(fname_pretrained=random_wing).eval()
    lm = fan.get_landmark(torch.rand(1, 3, 128, 128) * 2 - 1)
    assert lm.shape == (1, 98, 2)
    assert lm.min() >= 0 and lm.max() <= 128


def test_preds_from_heatmap_hand_computed():
    hm = torch.zeros(1, 2, 64, 64)
    hm[0, 0, 10, 20] = 1.0   # peak at row 10, col 20
    hm[0, 0, 10, 21] = 0.5   # right neighbour larger than left: +0.25 in x
    hm[0, 0, 9, 20] = 0.5    # upper neighbour larger than lower: -0.25 in y
    hm[0, 1, 0, 5] = 1.0     # on the border: no nudge
    p = get_preds_fromhm(hm)
    assert torch.allclose(p[0, 0], torch.tensor([20 + 1 + 0.25 - 0.5, 10 + 1 - 0.25 - 0.5]))
    assert torch.allclose(p[0, 1], torch.tensor([5 + 1 - 0.5, 0 + 1 - 0.5]))


def test_shift_moves_content_up_for_positive_k():
    x = torch.zeros(1, 1, 8, 1)
    x[0, 0, 5] = 1
    assert shift(x, 2)[0, 0, 3] == 1
    assert shift(x, -2)[0, 0, 7] == 1
    assert shift(x, 6)[0, 0, 7] == 1  # cyclic


def test_preprocess_keeps_only_face_parts():
    hm = torch.zeros(1, 98, 256, 256)
    hm[0, 0, 100, 100] = 1.0      # channel 0 (face line start): zeroed
    hm[0, 64, 150, 100] = 1.0     # an eye: kept in both masks
    hm[0, 85, 200, 120] = 1.0     # lower lip: in mask 1 only
    m1, m2 = preprocess(hm)
    assert m1[0, 0, 100, 100] == 0
    assert m1.sum() > 0 and m2.sum() > 0
    assert m1[0, 0, 200 - 8, 120] > 0.999 and m2[0, 0, 200 - 8, 120] == 0  # lower lip: shift +8 moves it up
    assert m2[0, 0, 150 + 24, 100] > 0.999                                    # eye: + (shift -24) term


def test_wing_checkpoint_errors(tmp_path, random_wing):
    with pytest.raises(FileNotFoundError, match='download.sh wing'):
        FAN(fname_pretrained=str(tmp_path / 'nope.ckpt'))
    sd = torch.load(random_wing)['state_dict']
    del sd['l0.bias']
    sd['extra.unknown'] = torch.zeros(1)
    bad = tmp_path / 'bad.ckpt'
    torch.save({'state_dict': sd}, bad)
    with pytest.raises(KeyError, match='l0.bias'):
        FAN(fname_pretrained=str(bad))


def test_wing_ignores_unknown_keys(tmp_path, random_wing):
    ckpt = torch.load(random_wing)
    ckpt['state_dict']['some.other.weight'] = torch.zeros(3)
    ckpt['optimizer'] = {}
    fname = tmp_path / 'w.ckpt'
    torch.save(ckpt, fname)
    fan = FAN(fname_pretrained=str(fname))
    assert torch.equal(fan.l0.bias, ckpt['state_dict']['l0.bias'])


def test_compiled_masks_equal_eager(random_wing):
    """compile_nets captures get_heatmap (FAN + post-processing) as one graph: no graph break, the same masks."""
    from torch._dynamo.utils import counters
    torch.manual_seed(0)
    fan = FAN(fname_pretrained=random_wing).eval()
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    masks = fan.get_heatmap(x)
    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(fan.get_heatmap, backend='aot_eager')
    masks_c = compiled(x)
    assert not counters['graph_break'] and counters['stats']['unique_graphs'] == 1
    for m, mc in zip(masks, masks_c):
        assert m.abs().sum() > 0 and torch.allclose(m, mc, rtol=0, atol=1e-5)


def test_landmarks_scale_to_the_input_size_below_64_px(random_wing):
    """The heatmaps are 64x64 whatever the input: landmarks of a 32-px image are their argmax positions halved (the
    reference's integer ratio 32 // 64 made them all 0); at 128 px doubled, as the reference."""
    torch.manual_seed(0)
    fan = FAN(fname_pretrained=random_wing).eval()
    for size, ratio in ((32, 0.5), (128, 2)):
        x = torch.rand(1, 3, size, size) * 2 - 1
        preds = get_preds_fromhm(fan.get_heatmap(x, b_preprocess=False).float())
        lm = fan.get_landmark(x)
        assert lm.abs().sum() > 0 and torch.equal(lm, preds * ratio)
