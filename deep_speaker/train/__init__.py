"""Training the ResCNN: configuration, devices, callbacks, batches and the original's three phases."""
