"""The built-in architectures: each module registers itself by name (`models.register`)."""
