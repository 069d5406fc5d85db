import torch

from vitkit.data.augment import (
    AugmentConfig,
    BatchAugment,
    default_pad,
    progressive_side,
    random_crop_pad,
    random_erasing,
    random_flip,
    random_resized_crop,
)


def test_pad_crop_is_a_shift():
    x = torch.arange(2 * 1 * 6 * 6, dtype=torch.uint8).view(2, 1, 6, 6)
    out = random_crop_pad(x, 2)
    assert out.shape == x.shape
    for i in range(2):  # every output is a window of the zero-padded input
        padded = torch.nn.functional.pad(x[i], (2, 2, 2, 2))
        assert any(torch.equal(out[i], padded[:, dy:dy + 6, dx:dx + 6])
                   for dy in range(5) for dx in range(5))


def test_an_unset_pad_is_an_eighth_of_the_side():
    assert [default_pad(s) for s in ((8, 8), (28, 28), (32, 32), (64, 48), (4, 4))] == [1, 3, 4, 6, 1]
    x = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    mean, std = [0.5] * 3, [0.5] * 3
    torch.manual_seed(0)
    y = torch.zeros(4, dtype=torch.long)
    unset, _ = BatchAugment(AugmentConfig(crop="pad"), 10, mean, std)(x, y)
    torch.manual_seed(0)
    four, _ = BatchAugment(AugmentConfig(crop="pad", pad=4), 10, mean, std)(x, y)
    assert torch.equal(unset, four)


def test_flip_and_resized_crop_shapes():
    x = torch.randn(16, 3, 8, 8)
    f = random_flip(x)
    assert all(torch.equal(f[i], x[i]) or torch.equal(f[i], x[i].flip(-1)) for i in range(16))
    assert random_resized_crop(x, 0.5).shape == x.shape
    e = random_erasing(x, 1.0)
    assert (e != x).any() and e.shape == x.shape


def test_batch_augment_mixup_gives_soft_targets():
    cfg = AugmentConfig(crop="pad", pad=1, flip=True, randaugment=2, erasing=0.5, mixup=0.8, cutmix=1.0)
    aug = BatchAugment(cfg, 10, [0.5] * 3, [0.5] * 3)
    x = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8)
    y = torch.arange(8)
    xo, yo = aug(x, y)
    assert xo.dtype == torch.float32 and xo.shape == (8, 3, 16, 16)
    assert yo.shape == (8, 10)
    torch.testing.assert_close(yo.sum(1), torch.ones(8))


def test_no_augmentation_only_normalizes():
    aug = BatchAugment(AugmentConfig(crop="none"), 10, [0.5], [0.25])
    x = torch.full((2, 1, 4, 4), 255, dtype=torch.uint8)
    xo, yo = aug(x, torch.tensor([1, 2]))
    torch.testing.assert_close(xo, torch.full((2, 1, 4, 4), 2.0))
    assert torch.equal(yo, torch.tensor([1, 2]))


def test_randaugment_groups_share_one_draw_of_operations():
    torch.manual_seed(0)
    x = torch.randint(0, 256, (1, 3, 16, 16), dtype=torch.uint8).expand(8, -1, -1, -1).contiguous()
    grouped = BatchAugment(AugmentConfig(randaugment=2, randaugment_group=4), 10, [0.5] * 3, [0.5] * 3)
    xo, _ = grouped(x, torch.zeros(8, dtype=torch.long))
    assert all(torch.equal(xo[i], xo[i // 4 * 4]) for i in range(8))  # same draw within a group
    assert not torch.equal(xo[0], xo[4])  # a new draw for the next group
    single = BatchAugment(AugmentConfig(randaugment=2), 10, [0.5] * 3, [0.5] * 3)
    xs, _ = single(x, torch.zeros(8, dtype=torch.long))
    assert len({xs[i].sum().item() for i in range(8)}) > 2  # per image by default


def test_progressive_side_grows_in_whole_patches_to_the_full_side():
    # side 32, from 3/4 of it, full from half the run on, patches of 4
    sides = [progressive_side(32, p, 0.5, 0.75, 4) for p in (0.0, 0.2, 0.3, 0.49, 0.5, 0.9)]
    assert sides == [24, 24, 28, 28, 32, 32]  # 0.75, 0.85, 0.9, 0.995 of 32 rounded down to 4s
    assert progressive_side(32, 0.0, 0.0, 0.75, 4) == 32  # off
    assert progressive_side(8, 0.0, 1.0, 0.1, 2) == 2  # never below one patch
    assert progressive_side(30, 0.99, 1.0, 0.5, 4) == 28  # a side the patch does not divide: rounded down


def test_progressive_batches_are_the_full_batch_resized():
    cfg = AugmentConfig(crop="none", progressive=0.5, progressive_scale=0.5)
    aug = BatchAugment(cfg, 10, [0.5] * 3, [0.25] * 3, stride=4)
    x = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    full, _ = aug(x, torch.arange(4))  # no progress given (the planner's timing, features): full size
    assert full.shape == (4, 3, 32, 32)
    early, _ = aug(x, torch.arange(4), progress=0.0)
    expected = torch.nn.functional.interpolate(full, size=(16, 16), mode="bilinear", antialias=True,
                                               align_corners=False)
    torch.testing.assert_close(early, expected)
    assert aug(x, torch.arange(4), progress=0.3)[0].shape[-2:] == (24, 24)
    assert torch.equal(aug(x, torch.arange(4), progress=0.5)[0], full)
    crops = BatchAugment(AugmentConfig(crop="resized", progressive=1.0), 10, [0.5] * 3, [0.25] * 3,
                         size=(16, 16), stride=4)
    assert crops(x, torch.arange(4), progress=0.0)[0].shape[-2:] == (12, 12)  # crops cut at the smaller size
