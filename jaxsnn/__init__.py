"""jaxsnn: convert trained Flax ANNs into spiking networks and simulate them fast."""
