"""Where the work runs: the device, and several processes under torchrun."""
