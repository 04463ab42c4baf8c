"""genfl-check-data: a box's folder checked as the ClientApp reads it, every problem named at once."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from genfl_cli.check_data import check
from test_edge_install import SERVER_ONLY

REPO = Path(__file__).resolve().parents[1]


def _png(path: Path, value: int, size=(8, 8)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full(size, value, np.uint8)).save(path)


def test_a_good_folder_prints_the_histogram_the_box_will_report(tmp_path, capsys):
    for i in range(3):
        _png(tmp_path / "eight" / f"{i}.png", 40 * i)
    _png(tmp_path / "zero" / "a.png", 10, size=(28, 28))
    assert check(tmp_path, "digits") == 0
    out = capsys.readouterr().out
    assert "3 image(s) of 8x8 L" in out and "1 image(s) of 28x28 L" in out
    assert "4 images, read as 1x8x8 (digits)" in out
    assert [line.split()[-1] for line in out.splitlines() if line.strip().startswith(("zero", "eight", "nine"))] == ["1", "3", "0"]


def test_a_missing_folder_a_misspelt_class_and_a_broken_image_are_all_named(tmp_path, capsys):
    assert check(tmp_path / "nowhere", "digits") == 1
    assert "nowhere: no such folder" in capsys.readouterr().err
    _png(tmp_path / "eigth" / "0.png", 1)
    _png(tmp_path / "one" / "0.png", 1)
    (tmp_path / "one" / "broken.png").write_bytes(b"\x89PNG not really")
    (tmp_path / "notes.txt").write_text("hi")
    assert check(tmp_path, "digits") == 1
    err = capsys.readouterr().err
    assert "the federation has no class 'eigth'; did you mean 'eight'?" in err
    assert "broken.png: not a readable image" in err and "notes.txt: a file outside the class folders" in err
    assert "3 problem(s); the ClientApp would refuse this folder" in err


def test_it_runs_on_an_edge_box_install():
    probe = ("import sys, genfl_cli.check_data; "
             f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({SERVER_ONLY!r})))")
    proc = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]"


def test_an_unreadable_image_is_described_in_words_not_as_a_python_object(tmp_path, capsys):
    """Issue 26 item 15: PIL's message named an in-memory buffer ('<_io.BytesIO object at 0x...>')."""
    from genfl_torch.classes import class_names
    from genfl_torch.imagefolder import ImageFolderError, read_image_folder

    _png(tmp_path / "one" / "0.png", 1)
    (tmp_path / "one" / "broken.png").write_bytes(b"\x89PNG not really")
    assert check(tmp_path, "digits") == 1
    err = capsys.readouterr().err
    assert f"{tmp_path / 'one' / 'broken.png'}: not a readable image (not an image format Pillow recognises" in err
    assert "BytesIO" not in err and " at 0x" not in err
    with pytest.raises(ImageFolderError) as raised:  # the ClientApp's own message, as the server logs it
        read_image_folder(tmp_path, class_names("digits"), channels=1, image_size=8)
    assert "broken.png: not a readable image" in str(raised.value) and "BytesIO" not in str(raised.value)


@pytest.mark.parametrize("folder, dataset, suggestion", [
    ("eigth", "digits", "eight"),     # two letters swapped
    ("Three", "digits", "three"),     # case
    ("for", "digits", "four"),        # one letter missing in a short name
    ("hrose", "cifar10", "horse"),
    ("three", "cifar10", None),       # a digits class on a cifar10 check: no 'horse'
    ("seven", "cifar10", None),
    ("tiger", "cifar10", None),
])
def test_only_close_spellings_are_suggested(tmp_path, capsys, folder, dataset, suggestion):
    _png(tmp_path / folder / "0.png", 1)
    assert check(tmp_path, dataset) == 1
    err = capsys.readouterr().err
    assert f"the federation has no class {folder!r}" in err
    if suggestion:
        assert f"did you mean {suggestion!r}?" in err
    else:
        assert "did you mean" not in err and "(its classes: airplane, automobile" in err


def test_a_folder_of_another_data_set_says_which(tmp_path, capsys):
    for name in ("three", "seven", "zero"):
        _png(tmp_path / name / "0.png", 1)
    assert check(tmp_path, "cifar10") == 1
    err = capsys.readouterr().err
    assert "did you mean" not in err
    assert "its class folders are all classes of digits, not of cifar10: if the federation trains on digits, " \
           "check with --dataset digits" in err


def test_files_skipped_for_their_suffix_are_reported_also_when_something_else_is_wrong(tmp_path, capsys):
    _png(tmp_path / "one" / "0.png", 1)
    (tmp_path / "one" / "scan.pdf").write_text("not an image suffix")
    (tmp_path / "two" / "deeper").mkdir(parents=True)
    (tmp_path / "two" / "deeper" / "readme").write_text("x")
    _png(tmp_path / "eigth" / "0.png", 1)  # a problem: the ClientApp would refuse the folder
    assert check(tmp_path, "digits") == 1
    err = capsys.readouterr().err
    assert "genfl-check-data: 2 file(s) skipped, not an image suffix (.png .jpg" in err
    assert str(tmp_path / "one" / "scan.pdf") in err and str(tmp_path / "two" / "deeper" / "readme") in err
    (tmp_path / "eigth" / "0.png").unlink()
    (tmp_path / "eigth").rmdir()
    assert check(tmp_path, "digits") == 0  # and when nothing else is wrong
    assert "2 file(s) skipped" in capsys.readouterr().err
