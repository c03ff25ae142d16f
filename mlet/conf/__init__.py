"""The Hydra configs of mlet, shipped as the package ``mlet.conf`` (``config_path="pkg://mlet.conf"``)."""
