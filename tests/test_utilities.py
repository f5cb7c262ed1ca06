"""The low-level helpers every layer shares (issue 16 item 2): terminal tables, which errors
are the user's, and reading images the same way in every command."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from sam2_vitplug.errors import one_line, user_error
from sam2_vitplug.images import collect_images, decoded_size, load_rgb
from sam2_vitplug.tables import format_table


def test_format_table_aligns_columns_under_a_per_column_rule():
    text = format_table(["name", "n"], [["alpha", 1], ["b", 22]])
    assert text.splitlines() == ["name   n", "-----  --", "alpha  1", "b      22"]
    assert format_table(["a", "b"], [["xx", "y"]], full_rule=True).splitlines()[1] == "-----"


def test_user_error_finds_the_cause_inside_a_wrapper():
    try:
        try:
            raise KeyError("no such preset 'x'; run sam2-vitplug info")
        except KeyError as inner:
            raise RuntimeError("Error instantiating 'Trunk'") from inner
    except RuntimeError as wrapped:
        cause = user_error(wrapped)
    assert isinstance(cause, KeyError) and one_line(cause) == "no such preset 'x'; run sam2-vitplug info"
    assert user_error(RuntimeError("a bug")) is None and user_error(None) is None


def test_images_are_read_the_same_way_everywhere(tmp_path):
    Image.fromarray(np.full((4, 6), 7, np.uint8), mode="L").save(tmp_path / "grey.png")
    Image.fromarray(np.zeros((3, 5, 4), np.uint8), mode="RGBA").save(tmp_path / "alpha.png")
    (tmp_path / "notes.txt").write_text("not an image")
    assert [p.name for p in collect_images([str(tmp_path)])] == ["alpha.png", "grey.png"]
    grey = load_rgb(tmp_path / "grey.png")
    assert grey.shape == (4, 6, 3) and grey.dtype == np.uint8 and int(grey.max()) == 7
    assert load_rgb(tmp_path / "alpha.png").shape == (3, 5, 3) and decoded_size(tmp_path / "grey.png") == (6, 4)
    (tmp_path / "cut.png").write_bytes((tmp_path / "grey.png").read_bytes()[:30])
    with pytest.raises(ValueError, match="cannot be decoded.*truncated"):
        load_rgb(tmp_path / "cut.png")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_rgb(tmp_path / "missing.png")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no images"):
        collect_images([str(tmp_path / "empty")])
