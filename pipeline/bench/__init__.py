"""The ``starkv-eval bench`` measurements (selection cost, a step's memory at 7B scale, shared-sweep speed-up) and
the ``starkv-eval plan`` preflight built on them."""
