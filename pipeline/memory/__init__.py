"""Memory of a step: exact accounting of live tensors, measured device peaks, fake-tensor simulation, exact peak cuts."""
