"""Project-specific code (big_vision's rule): studies built on the core packages, which never import them."""
