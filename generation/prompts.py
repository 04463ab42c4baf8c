"""Class names and text prompts for text-to-image generation of a data set's classes.

A class's prompts are every prompt template filled with its name (``{name}``, underscores as spaces)
and, for a template that also says ``{description}``, once with each of the class's descriptions
(`load_class_descriptions`); `generation.text_to_image` gives each image one of them.
"""

from __future__ import annotations

import string
from collections.abc import Mapping, Sequence
from pathlib import Path

# The class lists live with the data sets (genfl_torch), so edge nodes can map folder names without diffusers.
from genfl_torch.classes import BUILTIN_CLASS_NAMES, CIFAR10_CLASS_NAMES, CIFAR100_CLASS_NAMES, DIGITS_CLASS_NAMES  # noqa: F401


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


PLACEHOLDERS = ("name", "description")


def template_placeholders(template: str) -> set[str]:
    """The placeholders ``template`` uses; a ValueError if it uses any but ``{name}`` and ``{description}``
    or has neither (every class would get the same prompt)."""
    try:
        fields = {field for _, field, _, _ in string.Formatter().parse(template) if field is not None}
    except ValueError as error:  # an unmatched brace
        raise ValueError(f"prompt template {template!r} is malformed ({error}); write {{{{ }}}} for literal braces") from None
    if not fields <= set(PLACEHOLDERS):
        raise ValueError(
            f"prompt template {template!r} may use only the placeholders {{name}} and {{description}} "
            f"(write {{{{ }}}} for literal braces), not {', '.join(sorted(f'{{{f}}}' for f in fields - set(PLACEHOLDERS)))}"
        )
    if not fields:
        raise ValueError(f"prompt template {template!r} must contain '{{name}}' (or '{{description}}'), "
                         "else every class gets the same prompt")
    return fields


def checked_templates(templates: str | Sequence[str]) -> tuple[str, ...]:
    """``prompt_templates`` as a tuple of checked templates (one string is one template)."""
    templates = [templates] if isinstance(templates, str) else list(templates) if isinstance(templates, Sequence) else None
    if not templates or not all(isinstance(t, str) for t in templates):
        raise ValueError(f"prompt_templates must be a non-empty list of strings such as ['a photo of a {{name}}'], "
                         f"got {templates!r}")
    for template in templates:
        template_placeholders(template)
    return tuple(templates)


def _spaced(name: str) -> str:
    return name.replace("_", " ").strip()


def load_class_descriptions(
    source: str | Path | Mapping | None, class_names: Sequence[str]
) -> list[tuple[str, ...]] | None:
    """Per class (label order), its descriptions from ``source``; None if ``source`` is None.

    ``source`` is a JSON or YAML file, or the mapping itself: ``{class name: [description, ...]}``
    (one string is one description). Names match with underscores and spaces alike; a class the
    mapping leaves out gets no descriptions. A missing or malformed file, a name that is no class,
    or an entry that is not a non-empty string is a ValueError naming it.
    """
    if source is None:
        return None
    if isinstance(source, Mapping):
        where, mapping = "class_descriptions", source
    else:
        import yaml  # YAML is a superset of JSON: one parser reads both

        path = Path(source).expanduser()
        where = f"class_descriptions file {str(path.resolve())!r}"
        if not path.is_file():
            raise ValueError(f"{where} does not exist; set generator.class_descriptions to a JSON/YAML file "
                             "{class name: [description, ...]} or to null")
        try:
            mapping = yaml.safe_load(path.read_text())
        except (yaml.YAMLError, UnicodeDecodeError, OSError) as error:
            reason = " ".join(str(error).split())
            raise ValueError(f"{where} is not readable JSON/YAML: {reason}") from None
        if not isinstance(mapping, Mapping):
            raise ValueError(f"{where} must hold a mapping {{class name: [description, ...]}}, "
                             f"got {type(mapping).__name__}")
    index = {_spaced(name): c for c, name in enumerate(class_names)}
    per_class: list[list[str]] = [[] for _ in class_names]
    unknown = [str(key) for key in mapping if _spaced(str(key)) not in index]
    if unknown:
        raise ValueError(f"{where} names {len(unknown)} unknown class(es) {', '.join(map(repr, unknown[:10]))}; "
                         f"keys must be class names such as {', '.join(map(repr, class_names[:3]))}")
    for key, value in mapping.items():
        values = [value] if isinstance(value, str) else list(value) if isinstance(value, Sequence) else None
        if not values or not all(isinstance(v, str) and v.strip() for v in values):
            raise ValueError(f"{where}: class {key!r} must map to a non-empty string or a list of them, got {value!r}")
        if per_class[index[_spaced(str(key))]]:
            raise ValueError(f"{where} names class {_spaced(str(key))!r} twice")
        per_class[index[_spaced(str(key))]] = [v.strip() for v in values]
    return [tuple(d) for d in per_class]


def class_prompt_sets(
    templates: Sequence[str], class_names: Sequence[str], descriptions: Sequence[Sequence[str]] | None = None
) -> list[tuple[str, ...]]:
    """Per class (label order), its prompts: each template with ``{name}`` filled, a template that says
    ``{description}`` once per description of the class, in template-then-description order.

    Descriptions that no template uses, or a template that says ``{description}`` without
    descriptions for every class, are ValueErrors (the first would silently do nothing).
    """
    templates = checked_templates(templates)
    described = [t for t in templates if "description" in template_placeholders(t)]
    if descriptions is None:
        if described:
            raise ValueError(f"prompt template {described[0]!r} uses {{description}}, but generator.class_descriptions "
                             "is null: set it to a JSON/YAML file {class name: [description, ...]}")
    else:
        if not described:
            raise ValueError("generator.class_descriptions is set, but no prompt template uses {description}: add one "
                             "such as 'a photo of a {name}, {description}' to prompt_templates (or set it to null)")
        bare = [name for name, d in zip(class_names, descriptions) if not d]
        if bare:
            more = f" and {len(bare) - 10} more" if len(bare) > 10 else ""
            raise ValueError(f"class_descriptions has no description for class(es) {', '.join(map(repr, bare[:10]))}{more}; "
                             "a template uses {description}, so every class needs at least one")
    prompts = []
    for c, name in enumerate(class_names):
        own = []
        for template in templates:
            fills = descriptions[c] if template in described else [""]
            own += [template.format(name=name.replace("_", " "), description=d) for d in fills]
        prompts.append(tuple(own))
    return prompts


def class_prompts(template: str, class_names: Sequence[str]) -> list[str]:
    """One prompt per class: ``template`` with ``{name}`` replaced by the class name, underscores as spaces."""
    return [own[0] for own in class_prompt_sets([template], class_names)]


def checked_guidance_range(value: Sequence[float] | None) -> tuple[float, float] | None:
    """``guidance_scale_range`` as ``(low, high)``, or None; a ValueError unless 1 <= low <= high."""
    if value is None:
        return None
    try:
        low, high = (float(v) for v in value) if not isinstance(value, str) else (None, None)
    except (TypeError, ValueError):
        low = high = None
    if low is None or not 1 <= low <= high < float("inf"):
        raise ValueError(f"guidance_scale_range must be null or [low, high] with 1 <= low <= high (diffusers applies no "
                         f"guidance below 1; GPT-FL draws from [1, 5]), got {value!r}.")
    return low, high


def prompt_problem(generator_cfg: Mapping, class_names: Sequence[str]) -> str | None:
    """Why the text-to-image prompt settings of ``generator_cfg`` cannot work (one line), or None.

    What the generator's construction would raise, without torch or a model: for config checks.
    """
    try:
        class_prompt_sets(generator_cfg["prompt_templates"], class_names,
                          load_class_descriptions(generator_cfg["class_descriptions"], class_names))
        checked_guidance_range(generator_cfg["guidance_scale_range"])
    except (KeyError, ValueError) as error:
        return f"generator: {error}" if isinstance(error, ValueError) else f"generator: missing setting {error}"
    return None
