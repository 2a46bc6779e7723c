"""The example in docs/attacks.md runs as written and shows what it claims."""

import os
import re
from pathlib import Path

import torch

DOC = Path(__file__).resolve().parents[2] / "docs" / "attacks.md"


def test_docs_example_runs(tmp_path, capsys):
    code = re.search(r"```python\n(.*?)```", DOC.read_text(), re.S).group(1)
    threads, cwd = torch.get_num_threads(), os.getcwd()
    os.chdir(tmp_path)
    try:
        namespace = {"__name__": "docs_example"}
        exec(compile(code, str(DOC), "exec"), namespace)
    finally:
        os.chdir(cwd)
        torch.set_num_threads(threads)
    assert (tmp_path / "mia_roc.png").read_bytes()[:4] == b"\x89PNG"
    assert namespace["lira_report"].auc > 0.6 and namespace["rmia_report"].auc > 0.6
    assert namespace["efficacy"]["retrain"] > namespace["efficacy"]["original"]
    assert "LiRA offline: AUC=" in capsys.readouterr().out
