"""`python -m cfx_jax.cli`: the `cfx-jax` command without installing its script."""

import sys

from cfx_jax.cli import main

sys.exit(main())
