"""Each built-in data set's class names in label order: prompt words for the generator and folder
names for node-local image folders (one list, so a node's `cat/` folder is the class the server prompts for)."""

from __future__ import annotations

# torchvision's names, in label order (CIFAR's batches.meta / meta files).
CIFAR10_CLASS_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

CIFAR100_CLASS_NAMES = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle",
    "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle",
    "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch", "crab", "crocodile", "cup", "dinosaur",
    "dolphin", "elephant", "flatfish", "forest", "fox", "girl", "hamster", "house", "kangaroo", "keyboard",
    "lamp", "lawn_mower", "leopard", "lion", "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain",
    "mouse", "mushroom", "oak_tree", "orange", "orchid", "otter", "palm_tree", "pear", "pickup_truck", "pine_tree",
    "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray", "road", "rocket",
    "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail", "snake", "spider",
    "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank", "telephone", "television", "tiger", "tractor",
    "train", "trout", "tulip", "turtle", "wardrobe", "whale", "willow_tree", "wolf", "woman", "worm",
)

# scikit-learn's load_digits: label k is the handwritten digit k. Words prompt better than numerals.
DIGITS_CLASS_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

BUILTIN_CLASS_NAMES = {
    "cifar10": CIFAR10_CLASS_NAMES,
    "cifar100": CIFAR100_CLASS_NAMES,
    "digits": DIGITS_CLASS_NAMES,
}


def class_names(dataset: str) -> tuple[str, ...]:
    """The class names of built-in data set ``dataset`` in label order."""
    if dataset not in BUILTIN_CLASS_NAMES:
        raise ValueError(f"no class names for data set {dataset!r}; known: {', '.join(BUILTIN_CLASS_NAMES)}")
    return BUILTIN_CLASS_NAMES[dataset]
