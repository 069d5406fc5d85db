"""A student cut from its teacher: the teacher's first layers, at a lower resolution.

A ViT trained from scratch on a fine-tuning set of a few hundred photos learns little whatever
teaches it: its features must come from those photos alone. A student that starts from the
teacher's own patch embedding, class token, first blocks, final norm and head (as DistilBERT
starts from BERT's layers) keeps what pre-training learnt and is still several times faster:
fewer layers, and fewer patches at the lower resolution (position embeddings 2D-resampled to
the student's grid, as for fine-tuning at another size).
"""

from __future__ import annotations

import re
from dataclasses import replace

import torch

from ..config import patch_problem
from ..model import ViT
from ..sizes import hw
from ..training.config import OptimConfig

# how a cut student trains unless --optim is changed: AdamW at a fine-tuning rate. On the shared
# photos (6 layers, 112 px) it reached 82-83% where vitkit finetune's SGD at 0.01 reached 80-82%
# and AdamW at 3e-4 81% (docs/distill.md).
CUT_OPTIM = OptimConfig(lr=1e-4)


def default_layers(teacher: ViT) -> int:
    """Half the teacher's blocks (at least one)."""
    return max(1, teacher.config.num_layers // 2)


def default_size(teacher: ViT) -> tuple[int, int]:
    """Half the teacher's image side, in whole patches (at least one)."""
    p = teacher.config.patch_size
    return tuple(max(p, side // 2 // p * p) for side in teacher.config.image_size)


def cut_from_teacher(teacher: ViT, layers: int, image_size: int | tuple[int, int],
                     class_map: list[int]) -> ViT:
    """A ViT with the teacher's first `layers` blocks at `image_size`, its head's rows in the
    data's class order (class_map[i]: the teacher's output for the data's class i)."""
    t = teacher.config
    if not 1 <= layers <= t.num_layers:
        raise ValueError(f"--model.num_layers {layers}: a student cut from the teacher keeps 1 to "
                         f"{t.num_layers} of its layers")
    size = hw(image_size)
    problem = patch_problem(size, t.patch_size)
    if problem:
        raise ValueError(f"--data.image_size {list(size)}: {problem} (the teacher's patch size)")
    cfg = replace(t, num_layers=layers, image_size=size, num_classes=len(class_map))
    block = re.compile(r"blocks\.(\d+)\.")
    state = {}
    for key, value in teacher.state_dict().items():
        m = block.match(key)
        if m and int(m.group(1)) >= layers:
            continue
        state[key] = value
    if "pos_embed" in state:  # learned: the teacher's own table for the student's grid
        with torch.no_grad():
            state["pos_embed"] = teacher.pos_embed_for(cfg.grid_size).detach().clone()
    rows = torch.tensor(class_map)
    for head in ("head", "head_dist"):
        for part in ("weight", "bias"):
            if f"{head}.{part}" in state:
                state[f"{head}.{part}"] = state[f"{head}.{part}"][rows]
    student = ViT(cfg)
    student.load_state_dict(state)
    return student
