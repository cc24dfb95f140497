"""Shared by the CLI tests: a spec file written from YAML text."""
import pytest


@pytest.fixture
def spec_file(tmp_path):
    def write(text: str, name: str = "spec.yaml"):
        path = tmp_path / name
        path.write_text(text)
        return str(path)
    return write
