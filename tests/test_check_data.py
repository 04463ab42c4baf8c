"""genfl-check-data: a box's folder checked as the ClientApp reads it, every problem named at once."""

import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from cli.check_data import check
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
    probe = ("import sys, cli.check_data; "
             f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({SERVER_ONLY!r})))")
    proc = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]"
