import torch
from torch.utils.flop_counter import FlopCounterMode

from vitkit.cli import main
from vitkit.config import ViTConfig, variant
from vitkit.info import forward_macs, variant_rows
from vitkit.model import ViT


def test_analytic_flops_match_pytorch_counter():
    """PyTorch's counter sees every product when attention runs as explicit matmuls."""
    for cfg in [ViTConfig(image_size=32, patch_size=8, hidden_size=48, num_layers=2, num_heads=3,
                          mlp_size=96, num_classes=5, representation_size=16),
                ViTConfig(image_size=32, patch_size=4, hidden_size=32, num_layers=1, num_heads=2,
                          mlp_size=64, num_classes=10, stem="conv", stem_channels=8),
                ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_layers=1, num_heads=2,
                          mlp_size=64, num_classes=10, stem="conv", stem_channels=16, stem_stride=4)]:
        model = ViT(cfg).eval()
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            feats, _ = model.forward_features(torch.zeros(1, 3, 32, 32), return_attention=True)
            model.forward_head(feats)
        assert counter.get_total_flops() == 2 * forward_macs(cfg)


def test_variant_rows_use_real_parameter_counts():
    rows = {r["variant"]: r for r in variant_rows()}
    assert rows["B/16"]["params"] == 86_567_656
    assert rows["L/16"]["params"] == 304_326_632
    assert abs(rows["B/16"]["gflops"] - 2 * forward_macs(variant("B/16")) / 1e9) < 1e-9
    assert 34 < rows["B/16"]["gflops"] < 36  # 17.6 GMACs, the commonly quoted figure


def test_info_command_prints_table(capsys):
    main(["info"])
    out = capsys.readouterr().out
    assert "| B/16 | 12 | 768 | 3072 | 12 | 86,567,656 | 86M |" in out
    assert "H/14" in out and "Ti/16" in out


def test_a_size_a_patch_does_not_divide_is_counted_at_the_nearest_one():
    from vitkit.info import variant_rows

    rows = {r["variant"]: r for r in variant_rows(384)}
    assert rows["B/16"]["image_size"] == 384 and rows["H/14"]["image_size"] == 378
    assert rows["H/14"]["gflops"] > rows["L/16"]["gflops"]
