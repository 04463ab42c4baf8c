"""`genfl-check-data FOLDER --dataset digits`: check a box's image folder before its SuperNode starts.

Reads the folder the way the ClientApp will (`genfl_torch.imagefolder`, the data set's classes, image
size and channels from conf/dataset/), lists every problem at once (a missing folder, a class folder
whose name is not a class, with the class it is a close misspelling of, a file outside the class
folders, an unreadable image), always names the files skipped for their suffix, prints the image
sizes found and the label histogram the box would report, and exits 1 if anything would fail.
It needs only what an edge box has (requirements/edge.txt): run it from the clone there with
``python -m genfl_cli.check_data ~/genfl-data --dataset digits``.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import yaml  # comes with flwr, so it is on every box

from genfl_torch.classes import BUILTIN_CLASS_NAMES
from genfl_torch.imagefolder import IMAGE_SUFFIXES, ImageFolderError, _files, folder_problems, read_image_folder
from genfl_torch.partition import label_histogram


def _dataset(name: str) -> dict:
    """conf/dataset/<name>.yaml, found without importing conf (it needs omegaconf, a server package)."""
    conf_dir = Path(importlib.util.find_spec("conf").submodule_search_locations[0])
    return yaml.safe_load((conf_dir / "dataset" / f"{name}.yaml").read_text())


def skipped_files(folder: Path, names: list[str]) -> list[Path]:
    """Files in the class folders that the ClientApp skips for their suffix (it only logs a warning)."""
    if not folder.is_dir():
        return []
    return [path for name in names if (folder / name).is_dir()
            for path in _files(folder / name) if path.suffix.lower() not in IMAGE_SUFFIXES]


def other_dataset(folder: Path, dataset: str) -> str | None:
    """The built-in data set whose classes the folder's class folders are, when they are not ``dataset``'s."""
    if not folder.is_dir():
        return None
    found = {p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")}
    if not found or found <= set(BUILTIN_CLASS_NAMES[dataset]):
        return None
    return next((name for name, classes in sorted(BUILTIN_CLASS_NAMES.items())
                 if name != dataset and found <= set(classes)), None)


def check(folder: Path, dataset: str) -> int:
    spec, names = _dataset(dataset), list(BUILTIN_CLASS_NAMES[dataset])
    problems, sizes = folder_problems(folder, names)
    for size, count in sorted(sizes.items()):
        print(f"{count} image(s) of {size[0]}x{size[1]} {size[2]}")
    skipped = skipped_files(folder, names)
    if skipped:  # reported whatever else is wrong: a box owner may have meant them as images
        print(f"genfl-check-data: {len(skipped)} file(s) skipped, not an image suffix ({' '.join(IMAGE_SUFFIXES)}): "
              + ", ".join(str(path) for path in skipped[:10]) + (f", ... ({len(skipped)} in all)" if len(skipped) > 10 else ""),
              file=sys.stderr)
    if not problems:
        try:
            data = read_image_folder(folder, names, spec["channels"], spec["image_size"])
        except ImageFolderError as err:
            problems.append(str(err))
    if problems:
        for problem in problems:
            print(f"genfl-check-data: {problem}", file=sys.stderr)
        print(f"genfl-check-data: {folder}: {len(problems)} problem(s); the ClientApp would refuse this folder",
              file=sys.stderr)
        meant = other_dataset(folder, dataset)
        if meant:
            print(f"genfl-check-data: its class folders are all classes of {meant}, not of {dataset}: if the federation "
                  f"trains on {meant}, check with --dataset {meant}", file=sys.stderr)
        return 1
    histogram = label_histogram(data.labels.numpy(), len(names))
    print(f"{folder}: {len(data)} images, read as {spec['channels']}x{spec['image_size']}x{spec['image_size']} "
          f"({dataset}); the label histogram this box will report:")
    for name, count in zip(names, histogram):
        print(f"  {name:>16} {count}")
    return 0


EXAMPLES = """examples:
  genfl-check-data ~/genfl-data --dataset digits
  python -m genfl_cli.check_data ~/genfl-data --dataset cifar10   # on an edge box, from its clone
"""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="genfl-check-data", description=__doc__.splitlines()[0], epilog=EXAMPLES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="the folder the SuperNode's data-path will name")
    parser.add_argument("--dataset", required=True, choices=sorted(BUILTIN_CLASS_NAMES),
                        help="the federation's data set (its classes and image size)")
    args = parser.parse_args(argv)
    sys.exit(check(args.folder.expanduser().resolve(), args.dataset))


if __name__ == "__main__":
    main()
