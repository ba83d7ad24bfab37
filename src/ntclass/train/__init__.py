"""Training one model: the gunpowder data path (`gp_nodes`, `neither`), the augmentations
on the device, losses, validation, and the loop with its checkpoints (`run`)."""
