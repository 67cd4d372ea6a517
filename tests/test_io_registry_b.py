"""Every vendor reader in the technology registry: option tables agree with the reader signatures, and
``tissuestack convert --list`` shows them with their options."""

from __future__ import annotations

import inspect

import pytest

import tissuestack.io
from tissuestack.cli import main
from tissuestack.io import get_technology

FIRST_ROUND = ["xenium", "visium", "visium_hd", "merscope", "cosmx"]
NAMES = ["codex", "stereoseq", "steinbock", "seqfish", "dbit", "curio", "mcmicro", "macsima"]


@pytest.mark.parametrize("name", FIRST_ROUND + NAMES)
def test_reader_signatures_and_option_tables_agree(name):
    """The streaming generator, the public function and the CLI option table state the same options (names and
    defaults); a generator taking ``**options`` is checked through the public function only."""
    tech = get_technology(name)
    public = inspect.signature(getattr(tissuestack.io, name)).parameters
    stream = inspect.signature(tech.iter_elements).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in stream.values()):
        assert [(p.name, p.kind, p.default) for p in stream.values()] == [
            (p.name, p.kind, p.default) for p in public.values()
        ]
    for option in tech.options:
        assert option.name in public, option.name
        default = public[option.name].default
        assert option.default == (
            tuple(default) if option.type is tuple and default is not None else default
        ), option.name
    assert tech.name == name and name in tissuestack.io.__all__


def test_listed_with_options(capsys):
    assert main(["convert", "--list"]) == 0
    listed = capsys.readouterr().out
    for name in FIRST_ROUND + NAMES:
        assert f"\n{name}\n" in f"\n{listed}", name
        for option in get_technology(name).options:
            flag = option.name.replace("_", "-")
            assert f"--{flag}" in listed or f"--no-{flag}" in listed, (name, option.name)
