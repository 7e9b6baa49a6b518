"""Training the backbones: models, batches, the loop, the backend, devices and the launcher."""
