import torch

from nvlm_deploy.model.projector import pixel_shuffle


def _patch_grid(n=2, side=8, c=3):
    # x[b, r, col, :] encodes (b, r, col) so every output channel can be traced to its patch
    r = torch.arange(side).view(1, side, 1, 1).expand(n, side, side, c)
    col = torch.arange(side).view(1, 1, side, 1).expand(n, side, side, c)
    b = torch.arange(n).view(n, 1, 1, 1).expand(n, side, side, c)
    ch = torch.arange(c).view(1, 1, 1, c).expand(n, side, side, c)
    return (b * 1_000_000 + r * 10_000 + col * 100 + ch).float()


def test_v2_channel_order_matches_index_formula():
    c, side = 3, 8
    x = _patch_grid(side=side, c=c)
    y = pixel_shuffle(x, ratio=0.5, ps_version="v2")
    assert y.shape == (2, side // 2, side // 2, 4 * c)
    for b in range(2):
        for i in range(side // 2):
            for j in range(side // 2):
                # token (i, j): patches (2i,2j), (2i,2j+1), (2i+1,2j), (2i+1,2j+1), c channels each
                order = [(2 * i, 2 * j), (2 * i, 2 * j + 1), (2 * i + 1, 2 * j), (2 * i + 1, 2 * j + 1)]
                expected = torch.cat([x[b, r, col] for r, col in order])
                assert torch.equal(y[b, i, j], expected)


def test_v1_is_v2_with_spatial_axes_transposed():
    x = _patch_grid()
    v1 = pixel_shuffle(x, ratio=0.5, ps_version="v1")
    v2 = pixel_shuffle(x, ratio=0.5, ps_version="v2")
    assert not torch.equal(v1, v2)
    assert torch.equal(v1, v2.transpose(1, 2))
