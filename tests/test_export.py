"""genfl-export-partitions: the files an edge node gets are exactly its built-in partition."""

from genfl_cli.export_partitions import main
from genfl_torch.classes import class_names
from genfl_torch.imagefolder import read_image_folder
from genfl_torch.partition import label_histogram


def test_export_writes_each_partition_as_class_folders(tmp_path, capsys):
    assert main(["--num-partitions", "5", "--out", str(tmp_path), "--only", "0,3", "seed=2"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["partition-0", "partition-3"]
    printed = capsys.readouterr().out
    for partition in (0, 3):
        data = read_image_folder(tmp_path / f"partition-{partition}", class_names("digits"), 1, 8)
        assert f"partition-{partition}: {len(data)} images, per class {label_histogram(data.labels.numpy(), 10)}" in printed


def test_export_refuses_bad_arguments_with_one_line(tmp_path, capsys):
    assert main(["--num-partitions", "3", "--out", str(tmp_path), "--only", "3"]) == 2
    assert "--only ids must lie in 0..2" in capsys.readouterr().err
    assert main(["--num-partitions", "3", "--out", str(tmp_path), "partition.alpha=-1"]) == 2
    assert "config error: partition.alpha" in capsys.readouterr().err
    (tmp_path / "partition-0").mkdir()
    (tmp_path / "partition-0" / "x").write_text("x")
    assert main(["--num-partitions", "3", "--out", str(tmp_path), "--only", "0"]) == 2
    assert "not empty" in capsys.readouterr().err
