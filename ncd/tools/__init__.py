"""Command-line tools shipped with ncd."""
