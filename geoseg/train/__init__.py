"""Training: lazy zarr dataset, albumentations transforms, smp model, loop."""
