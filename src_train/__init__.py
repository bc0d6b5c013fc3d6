"""Fine-tuning loop for I-MedSAM: losses, point sampling, decoder fitting (no Qt, no napari)."""
