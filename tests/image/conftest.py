"""Image suite fixtures; the registry and test images live in tests/image_fixtures.py."""

pytest_plugins = ["tests.image_fixtures"]
