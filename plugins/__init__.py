"""alambic's built-in plugins.

Each module is an ordinary pluggy plugin, declared as an entry point of the ``alambic``
distribution (group ``alambic``) in pyproject.toml, exactly as a third-party package would be.
"""
