"""Fixtures of the data-pipeline tests: a small digits cache, a small emoji cache, tiny image folders."""

import pytest
from data_helpers import DIGITS_LIMIT, HAS_EMOJI_FONT, make_image_folder

from rq_jax.data import embedded


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    """One cache directory per session, so each embedded dataset is rendered only once."""
    return str(tmp_path_factory.mktemp("embedded_cache"))


@pytest.fixture(scope="session")
def digits_config(cache_dir):
    """A 300-image, 16-px digits config (cache rendered by the first test that uses it)."""
    return {"name": "digits", "data_dir": cache_dir, "image_size": 16, "limit": DIGITS_LIMIT}


@pytest.fixture(scope="session")
def emoji_subset(cache_dir):
    """60 emoji at 32 px, evenly spaced over the font (rendered once per session)."""
    if not HAS_EMOJI_FONT:
        pytest.skip(f"no emoji font: {embedded.FONT_APT_COMMAND}")
    return embedded.load_embedded("emoji", cache_dir=cache_dir, image_size=32, limit=60)


@pytest.fixture
def image_folder(tmp_path):
    return make_image_folder(tmp_path / "images")
