"""`python -m ablate` is the same as the `ablate` console script."""

from ablate.ablations.cli import main

main()
