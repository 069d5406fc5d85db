"""Looking inside a ViT: attention maps, attention rollout and the paper's Section 4.5 figures.

analysis: the quantities as NumPy arrays; figures: matplotlib PNGs; report: one HTML page;
run: everything for one model, as `vitkit visualize` does it.
"""

from .analysis import (
    attention_rollout,
    capture_attention,
    class_token_attention,
    mean_attention_distance,
    patch_distances,
    patch_embedding_pcs,
    position_embedding_similarity,
    readout,
    uniform_attention_distance,
    upsample,
)
from .figures import (
    plot_attention_distance,
    plot_attention_grid,
    plot_curves,
    plot_patch_pcs,
    plot_patches,
    plot_position_similarity,
    plot_rollout,
)
from .report import Section, write_report
from .run import (
    Inputs,
    Result,
    load_images,
    make_figures,
    noise_images,
    sample_data,
    visualize_path,
)

__all__ = [
    "Inputs", "Result", "Section", "attention_rollout", "capture_attention", "class_token_attention",
    "load_images", "make_figures", "mean_attention_distance", "noise_images",
    "patch_distances", "patch_embedding_pcs", "plot_attention_distance", "plot_attention_grid",
    "plot_curves", "plot_patch_pcs", "plot_patches", "plot_position_similarity", "plot_rollout",
    "position_embedding_similarity", "readout", "sample_data", "uniform_attention_distance", "upsample",
    "visualize_path", "write_report",
]
