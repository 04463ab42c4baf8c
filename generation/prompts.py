"""Class names and text prompts for text-to-image generation of a data set's classes."""

from __future__ import annotations

from collections.abc import Sequence

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


def builtin_class_names(dataset: str) -> tuple[str, ...]:
    """The built-in class names of ``dataset`` in label order."""
    if dataset not in BUILTIN_CLASS_NAMES:
        raise ValueError(
            f"No built-in class names for data set {dataset!r} (known: {', '.join(BUILTIN_CLASS_NAMES)}); "
            "give them in the generator's class_names."
        )
    return BUILTIN_CLASS_NAMES[dataset]


def resolve_class_names(class_names: Sequence[str] | None, default: Sequence[str]) -> tuple[str, ...]:
    """The user's class names if given, else ``default``; a user list must name every class once."""
    if class_names is None:
        return tuple(default)
    if isinstance(class_names, str) or len(class_names) != len(default):
        given = repr(class_names) if isinstance(class_names, str) else f"{len(class_names)} names"
        raise ValueError(
            f"class_names must be a list of exactly {len(default)} names (one per class, in label order); "
            f"got {given}."
        )
    return tuple(str(name) for name in class_names)


def class_prompts(template: str, class_names: Sequence[str]) -> list[str]:
    """One prompt per class: ``template`` with ``{name}`` replaced by the class name, underscores as spaces."""
    if "{name}" not in template:
        raise ValueError(f"prompt_template must contain '{{name}}' (else every class gets the same prompt): {template!r}")
    try:
        return [template.format(name=name.replace("_", " ")) for name in class_names]
    except (KeyError, IndexError, ValueError) as error:
        raise ValueError(
            f"prompt_template may use only the placeholder {{name}} (write {{{{ }}}} for literal braces): "
            f"{template!r} ({error!r})"
        ) from None
