"""docs/walkthrough.ipynb: it runs top to bottom in a fresh kernel, every assert in it holds,
it stays quick, and the stored copy carries its outputs so that it reads without running."""

import json
import sys
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("timm")
pytest.importorskip("sklearn")

NOTEBOOK = Path(__file__).resolve().parents[1] / "docs" / "walkthrough.ipynb"
TIME_LIMIT_S = 180  # measured on a 2-core CPU
MAX_BYTES = 2_000_000


def test_stored_notebook_has_its_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.execution_count for c in code), "store the notebook executed"
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]
    images = [o for c in code for o in c.outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 7  # the seven figures of steps 1, 3, 4 and 7
    assert NOTEBOOK.stat().st_size < MAX_BYTES


def _kernel_for_this_python(folder: Path):
    """A kernel manager that starts this interpreter (the one vitkit is installed in), whatever
    kernels are registered elsewhere."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    spec = folder / "kernels" / "walkthrough"
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(json.dumps(
        {"argv": argv, "display_name": "walkthrough", "language": "python"}))
    specs = KernelSpecManager(kernel_dirs=[str(folder / "kernels")], ensure_native_kernel=False)
    return KernelManager(kernel_name="walkthrough", kernel_spec_manager=specs)


def test_walkthrough_runs_in_a_fresh_kernel(tmp_path):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    for cell in nb.cells:  # start from nothing: no stored outputs, no counts
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    client = nbclient.NotebookClient(nb, km=_kernel_for_this_python(tmp_path), timeout=600,
                                     resources={"metadata": {"path": str(tmp_path)}})
    start = time.perf_counter()
    client.execute()  # raises CellExecutionError when a cell fails, failed asserts included
    elapsed = time.perf_counter() - start
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "max |vitkit logits - timm logits|" in text
    assert elapsed < TIME_LIMIT_S, f"the notebook took {elapsed:.0f} s (limit {TIME_LIMIT_S} s)"


def test_plot_patches(tmp_path):
    import numpy as np
    from PIL import Image

    from vitkit.visualize import plot_patches

    rng = np.random.default_rng(0)
    for image, patch in [(rng.integers(0, 256, (3, 32, 48), dtype=np.uint8), 8),
                         (rng.integers(0, 256, (1, 8, 8), dtype=np.uint8), 2)]:
        path, size = plot_patches(image, patch, tmp_path / f"p{patch}.png", "patches")
        with Image.open(path) as png:
            assert png.size == size
    with pytest.raises(ValueError, match="not a multiple of patch size 5"):
        plot_patches(image, 5, tmp_path / "bad.png", "patches")
