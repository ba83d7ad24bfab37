"""No user-supplied file is unpickled, and no config value reaches a shell unquoted."""

from __future__ import annotations

import ast
import re

import pytest
import torch
from conftest import CodeRunningPayload
from workflow_helpers import ROOT

from ntclass.errors import NtclassError
from ntclass.train.run import load_model

PYTHON_SOURCES = sorted([*ROOT.glob("src/ntclass/**/*.py"), *ROOT.glob("workflow_scripts/*.py"),
                         *ROOT.glob("benchmarks/*.py")])
WORKFLOW_SOURCES = sorted([ROOT / "Snakefile", *ROOT.glob("rules/*.smk")])
# the one module that unpickles, with an unpickler that refuses every class
PICKLE_LOADER = ROOT / "src/ntclass/split/legacy.py"



def test_a_checkpoint_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "was-run"
    path = tmp_path / "model.pt"
    torch.save({"format": "ntclass-model-1", "payload": CodeRunningPayload(str(marker))},
               path)
    with pytest.raises(NtclassError, match="cannot load model checkpoint"):
        load_model(path)
    assert not marker.exists()


def unsafe_calls(source: str, allowed_unpickler: bool = False) -> list[str]:
    """Calls that unpickle or evaluate: pickle/joblib/pandas pickles, numpy with
    allow_pickle, torch.load without weights_only=True, yaml.load, eval, exec."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        name = ast.unparse(node.func)
        keywords = {k.arg: ast.unparse(k.value) for k in node.keywords}
        if (name in ("pickle.load", "pickle.loads", "pd.read_pickle", "joblib.load",
                     "yaml.load", "yaml.unsafe_load", "eval", "exec", "dill.load")
                or (name == "torch.load" and keywords.get("weights_only") != "True")
                or (name.endswith("np.load") and keywords.get("allow_pickle") == "True")
                or (name.endswith("Unpickler") and not allowed_unpickler)):
            found.append(f"line {node.lineno}: {ast.unparse(node)}")
    return found


def test_the_unsafe_call_finder_finds_them():
    source = ("torch.load(p)\ntorch.load(p, weights_only=False)\npickle.loads(b)\n"
              "np.load(f, allow_pickle=True)\npickle.Unpickler(f).load()\n"
              "torch.load(p, weights_only=True)\nnp.load(f)\n")
    assert [c.split(":")[0] for c in unsafe_calls(source)] == [f"line {i}" for i in range(1, 6)]


@pytest.mark.parametrize("path", PYTHON_SOURCES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_unsafe_loading(path):
    assert unsafe_calls(path.read_text(), allowed_unpickler=path == PICKLE_LOADER) == []


SHELL_BLOCK = re.compile(r"^\s*shell:\s*\n?(?P<body>(?:.*\n)*?)(?=^\s*\w+:|^rule |\Z)",
                         re.MULTILINE)


def unquoted_placeholders(text: str) -> list[str]:
    """Placeholders of `shell:` commands that Snakemake would not quote (no `:q`)."""
    found = []
    for block in SHELL_BLOCK.finditer(text):
        body = block.group("body").replace("{{", "").replace("}}", "")
        found += [p for p in re.findall(r"\{([^{}]+)\}", body) if not p.endswith(":q")]
    return found


def test_the_placeholder_check_finds_unquoted_values():
    rule = ('rule x:\n    params:\n        a=1\n    shell:\n'
            '        "cp {input:q} {params.dest} && echo {{literal}}"\n')
    assert unquoted_placeholders(rule) == ["params.dest"]


@pytest.mark.parametrize("path", WORKFLOW_SOURCES, ids=lambda p: p.name)
def test_no_config_value_reaches_a_shell_unquoted(path):
    text = path.read_text()
    assert unquoted_placeholders(text) == []
    # a `run:` block could hand config values to a shell without Snakemake's quoting
    assert not re.search(r"^\s*run:", text, re.MULTILINE)
    assert "os.system" not in text and "subprocess" not in text
