"""ml_collections config files: get_config(arg) -> ConfigDict."""
