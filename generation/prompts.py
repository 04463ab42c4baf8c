"""Class names and text prompts for text-to-image generation of a data set's classes."""

from __future__ import annotations

from collections.abc import Sequence

# The class lists live with the data sets (torchcore), so edge nodes can map folder names without diffusers.
from torchcore.classes import BUILTIN_CLASS_NAMES, CIFAR10_CLASS_NAMES, CIFAR100_CLASS_NAMES, DIGITS_CLASS_NAMES  # noqa: F401


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
