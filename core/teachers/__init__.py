"""Teachers for distillation: the frozen ensemble and its loading, and the bundled benchmark's teachers."""
