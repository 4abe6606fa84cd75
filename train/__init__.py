"""Job entry points: `python -m train --config configs/<experiment>.py --workdir DIR`."""
