"""A run planned against the clock. When a run sets no epochs, the trainer times a few
optimizer steps of the model it built, on this machine, in each training precision it may
use (fp32, and bf16 where the hardware has it natively), keeps the faster one, and trains for
the default number of epochs (vitkit.training.batches.default_epochs) or as many fewer as end
within the run's time budget: --run.time_budget, else a default chosen by the size of the
data (default_budget). A rule keyed on CPU flags does not carry across CPU generations (bf16
pays on some CPUs with AVX512-BF16 and not on others); a measurement on the CPU that runs the
job does. The plan is printed in one line and stored with the run (config.json "plan"), and
the epochs and precision it chose are written into the run's recipe, so a resumed run keeps
them."""

from __future__ import annotations

import copy
import math
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..files import atomic_save_tensors, atomic_torch_save
from ..precision import autocast

BUDGET_MIN = 5.0  # minutes for a set of up to BUDGET_IMAGES training images
BUDGET_IMAGES = 10_000  # beyond it the default budget grows with the set ...
MAX_BUDGET_MIN = 30.0  # ... up to this
SAFETY = 0.9  # plan to end this far into the time that is left
WARMUP_STEPS, MAX_STEPS, MEASURE_S = 2, 8, 1.5  # timing per precision: steps and seconds at most


def default_budget(n_train: int) -> float:
    """Minutes a run without epochs or a budget may take: BUDGET_MIN up to BUDGET_IMAGES
    training images, then in proportion to the set, at most MAX_BUDGET_MIN."""
    return min(MAX_BUDGET_MIN, BUDGET_MIN * max(1.0, n_train / BUDGET_IMAGES))


@dataclass
class RunPlan:
    """What the planner chose and what it measured."""

    epochs: int
    precision: str
    budget_min: float  # the whole run's budget, minutes
    step_s: dict[str, float]  # measured seconds per optimizer step, by precision
    eval_s: float  # measured seconds of evaluating one image in the precision chosen
    save_s: float  # measured seconds of the checkpoint written after every epoch
    expected_s: float  # training and evaluation the plan expects, seconds
    max_epochs: int  # what the default epochs rule would train without a clock
    spent_s: float = 0.0  # seconds spent before planning (reading the data, building the model)

    def line(self, what: str) -> str:
        """One line for the log: "plan: <what>, fp32, 60 epochs, about 2.1 min on this CPU ..."."""
        steps = ", ".join(f"{p} {s * 1000:.0f} ms" for p, s in self.step_s.items())
        cut = f" (of {self.max_epochs}: the budget)" if self.epochs < self.max_epochs else ""
        return (f"plan: {what}, {self.precision}, {self.epochs} epochs{cut}, about "
                f"{self.expected_s / 60:.1f} min of a {self.budget_min:g} min budget "
                f"(a step measured: {steps})")

    def to_dict(self) -> dict:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()} | {
            "step_s": {p: round(s, 5) for p, s in self.step_s.items()}}


def plan_length(step_s: dict[str, float], eval_s: dict[str, float], steps_per_epoch: int, eval_images: int,
                max_epochs: int, budget_min: float, spent_s: float = 0.0, eval_every: int = 1,
                save_s: float = 0.0) -> RunPlan:
    """The plan for measured times (deterministic: the same times give the same plan): the
    precision of the fastest step (the first among equals), and the most epochs up to
    max_epochs whose training, evaluation (eval_s seconds an image) and checkpoints (save_s
    each epoch) end within SAFETY of the budget left after spent_s; at least one."""
    precision = min(step_s, key=lambda p: (step_s[p], list(step_s).index(p)))
    step = step_s[precision]
    eval_epoch = eval_images * eval_s[precision]
    per_epoch = steps_per_epoch * step + eval_epoch / max(eval_every, 1) + save_s
    left = max(0.0, budget_min * 60 * SAFETY - spent_s - eval_epoch)  # the last epoch is always evaluated
    epochs = max(1, min(max_epochs, math.floor(left / max(per_epoch, 1e-9))))
    return RunPlan(epochs, precision, budget_min, dict(step_s), eval_s[precision], save_s,
                   epochs * per_epoch + eval_epoch, max_epochs, spent_s)


def measure_steps(net: torch.nn.Module, loss, x: torch.Tensor, y: torch.Tensor, precisions: list[str],
                  device: torch.device, make_optimizer, clip_grad: float | None = None
                  ) -> tuple[dict[str, float], dict[str, float]]:
    """Seconds of an optimizer step and of evaluating one image, by precision, timed on a copy
    of `net` with the batch (x, y). A step is what the loop does: loss(net, x, y)
    (augmentation, forward), backward, gradient clipping and the run's optimizer
    (make_optimizer(module)); WARMUP_STEPS untimed, then the mean of up to MAX_STEPS or
    MEASURE_S. Evaluation: the same forward without gradients, per image. The copy and the
    random state are thrown away, so the run itself is as if never timed."""
    steps, evals = {}, {}

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        probe = copy.deepcopy(net).train()
        opt = make_optimizer(probe)
        for precision in precisions:
            times: list[float] = []
            for i in range(WARMUP_STEPS + MAX_STEPS):
                t = time.perf_counter()
                with autocast(device, precision):
                    value, _ = loss(probe, x, y)
                value.backward()
                if clip_grad:
                    torch.nn.utils.clip_grad_norm_(probe.parameters(), clip_grad)
                opt.step()
                opt.zero_grad(set_to_none=True)
                sync()
                if i >= WARMUP_STEPS:
                    times.append(time.perf_counter() - t)
                    if sum(times) >= MEASURE_S:
                        break
            steps[precision] = statistics.mean(times)
            probe.eval()
            with torch.no_grad(), autocast(device, precision):
                loss(probe, x, y)
                sync()
                t = time.perf_counter()
                loss(probe, x, y)
                sync()
                evals[precision] = (time.perf_counter() - t) / len(x)
            probe.train()
    return steps, evals


def measure_save(model: torch.nn.Module) -> float:
    """Seconds to write a checkpoint of `model` as every epoch does (its weights, and a state
    file with the weights and the optimizer's two moments), timed in a temporary folder."""
    weights = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    with tempfile.TemporaryDirectory() as d:
        moments = [{k: v.clone() for k, v in weights.items()} for _ in range(2)]  # one storage each
        t = time.perf_counter()
        atomic_save_tensors(Path(d) / "model.safetensors", weights)
        atomic_torch_save(Path(d) / "state.pt", {"model": weights, "moments": moments})
        return time.perf_counter() - t
