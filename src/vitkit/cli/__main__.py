"""`python -m vitkit.cli` (as torchrun launches it)."""

from . import main

main()
