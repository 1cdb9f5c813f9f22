"""A run's configuration: the TrainConfig sections, reading YAML and overrides, named presets."""
