"""deeplab_ssl: DeepLabv3 / DeepLabv3+ with the structural similarity loss (SSL)."""
