"""Prompt sets per class: several templates, class descriptions from a file, and their errors (no model)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from generation.prompts import (
    CIFAR10_CLASS_NAMES,
    CIFAR100_CLASS_NAMES,
    checked_templates,
    class_prompt_sets,
    class_prompts,
    load_class_descriptions,
    prompt_problem,
)

NAMES = ("maple_tree", "cat", "dog")


def test_every_template_gives_each_class_a_prompt_in_template_order():
    prompts = class_prompt_sets(["a photo of a {name}", "a blurry photo of a {name}"], NAMES)
    assert prompts[0] == ("a photo of a maple tree", "a blurry photo of a maple tree")
    assert len(prompts) == 3 and all(len(own) == 2 for own in prompts)


def test_one_template_gives_the_single_prompt_of_before():
    assert [own[0] for own in class_prompt_sets(["a photo of a {name}"], CIFAR100_CLASS_NAMES)] == \
        class_prompts("a photo of a {name}", CIFAR100_CLASS_NAMES)
    assert checked_templates("a photo of a {name}") == ("a photo of a {name}",)  # a string is one template


def test_a_description_template_gives_one_prompt_per_description_of_the_class(tmp_path):
    path = tmp_path / "descriptions.json"
    path.write_text(json.dumps({"maple tree": ["in autumn", "with red leaves"], "cat": "asleep", "dog": ["running"]}))
    descriptions = load_class_descriptions(path, NAMES)
    assert descriptions == [("in autumn", "with red leaves"), ("asleep",), ("running",)]
    prompts = class_prompt_sets(["a photo of a {name}", "a photo of a {name}, {description}"], NAMES, descriptions)
    assert prompts[0] == ("a photo of a maple tree", "a photo of a maple tree, in autumn",
                          "a photo of a maple tree, with red leaves")
    assert prompts[1] == ("a photo of a cat", "a photo of a cat, asleep")
    # {description} alone: the descriptions are whole prompts
    assert class_prompt_sets(["{description}"], NAMES, descriptions)[2] == ("running",)


def test_descriptions_read_from_yaml_with_names_spelt_either_way(tmp_path):
    path = tmp_path / "descriptions.yaml"
    path.write_text("maple_tree:\n  - in autumn\ncat: [asleep, on a sofa]\n")
    assert load_class_descriptions(path, NAMES) == [("in autumn",), ("asleep", "on a sofa"), ()]
    assert load_class_descriptions({"maple tree": "in autumn"}, NAMES)[0] == ("in autumn",)  # a mapping in the config
    assert load_class_descriptions(None, NAMES) is None


@pytest.mark.parametrize("template, message", [
    ("a photo", "must contain '{name}'"),
    ("a {style} photo of a {name}", "only the placeholders {name} and {description}"),
    ("a photo of a {name", "malformed"),
    ("a photo of a {0}", "only the placeholders"),
])
def test_bad_templates_are_named(template, message):
    with pytest.raises(ValueError, match=message.replace("{", "\\{").replace("}", "\\}")):
        class_prompt_sets([template], NAMES)


def test_templates_must_be_a_non_empty_list_of_strings():
    for bad in ([], [1], None):
        with pytest.raises(ValueError, match="prompt_templates must be a non-empty list"):
            checked_templates(bad)


def test_bad_description_files_are_named(tmp_path):
    with pytest.raises(ValueError, match="class_descriptions file .*no-such.json' does not exist"):
        load_class_descriptions(tmp_path / "no-such.json", NAMES)
    (tmp_path / "broken.json").write_text('{"cat": ["asleep"')
    with pytest.raises(ValueError, match="broken.json' is not readable JSON/YAML"):
        load_class_descriptions(tmp_path / "broken.json", NAMES)
    (tmp_path / "list.json").write_text('["asleep"]')
    with pytest.raises(ValueError, match="must hold a mapping"):
        load_class_descriptions(tmp_path / "list.json", NAMES)


@pytest.mark.parametrize("mapping, message", [
    ({"cat": ["asleep"], "horse": ["galloping"], "lion": "roaring"}, "2 unknown class\\(es\\) 'horse', 'lion'; "
                                                                     "keys must be class names such as 'maple_tree'"),
    ({"cat": []}, "class 'cat' must map to a non-empty string or a list of them"),
    ({"cat": ["asleep", 3]}, "class 'cat' must map to"),
    ({"cat": "  "}, "class 'cat' must map to"),
    ({"maple tree": "red", "maple_tree": "green"}, "names class 'maple tree' twice"),
])
def test_bad_description_entries_are_named(mapping, message):
    with pytest.raises(ValueError, match=message):
        load_class_descriptions(mapping, NAMES)


def test_descriptions_and_description_templates_go_together():
    descriptions = load_class_descriptions({"maple tree": "red", "cat": "asleep"}, NAMES)
    with pytest.raises(ValueError, match="no prompt template uses \\{description\\}"):
        class_prompt_sets(["a photo of a {name}"], NAMES, descriptions)
    with pytest.raises(ValueError, match="uses \\{description\\}, but generator.class_descriptions is null"):
        class_prompt_sets(["a photo of a {name}, {description}"], NAMES)
    with pytest.raises(ValueError, match="no description for class\\(es\\) 'dog'; .*every class needs at least one"):
        class_prompt_sets(["a photo of a {name}, {description}"], NAMES, descriptions)
    many = load_class_descriptions({"cat": "asleep"}, CIFAR10_CLASS_NAMES)
    with pytest.raises(ValueError, match="'airplane', 'automobile', 'bird', 'deer'"):
        class_prompt_sets(["{description}"], CIFAR10_CLASS_NAMES, many)


def test_config_checks_see_prompt_problems_without_torch(tmp_path):
    config = yaml.safe_load((Path(__file__).resolve().parents[1] / "conf" / "generator" / "stable_diffusion.yaml").read_text())
    assert prompt_problem(config, CIFAR10_CLASS_NAMES) is None
    assert "guidance_scale_range must be null or [low, high]" in prompt_problem(
        {**config, "guidance_scale_range": [5, 1]}, CIFAR10_CLASS_NAMES)
    assert "generator.class_descriptions is null" in prompt_problem(
        {**config, "prompt_templates": ["{description}"]}, CIFAR10_CLASS_NAMES)
    assert "missing.yaml' does not exist" in prompt_problem(
        {**config, "prompt_templates": ["{description}"], "class_descriptions": str(tmp_path / "missing.yaml")},
        CIFAR10_CLASS_NAMES)
    code = "import sys, generation.prompts; assert 'torch' not in sys.modules, 'generation.prompts imported torch'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])
