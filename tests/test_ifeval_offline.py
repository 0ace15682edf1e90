"""NLTK's English Punkt model is materialised offline: no network, empty NLTK data path."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent(
    """
    import json, socket, sys
    attempts = []
    def refuse(*args, **kwargs):
        attempts.append(args[1:2])
        raise OSError("network disabled for this test")
    # Networking off for the whole process: any connection attempt fails and is counted.
    socket.socket.connect = refuse
    socket.socket.connect_ex = refuse
    socket.create_connection = refuse
    import nltk
    nltk.data.path[:] = [sys.argv[1]]          # an empty NLTK data path
    from orchestrator.tasks.ifeval.punkt import ensure_punkt, nltk_has_punkt
    before = nltk_has_punkt()
    source = ensure_punkt()
    from orchestrator.tasks.ifeval import IFEvalChecker
    checker = IFEvalChecker()
    v = checker.check("k", "P", ["length_constraints:number_sentences"],
                      [{"num_sentences": 3, "relation": "at least"}],
                      "Dr. Smith went to Washington D.C. on Monday. He met Mr. Jones. They talked.")
    tok = nltk.tokenize.PunktTokenizer("english")
    print(json.dumps({"before": before, "source": source, "verdict": v.strict[0], "attempts": len(attempts),
                      "sentences": tok.tokenize("Mr. Brown paid $3.50 at the U.S. border. It rained.")}))
    """
)


def test_punkt_offline(tmp_path: Path) -> None:
    empty = tmp_path / "nltk_empty"
    empty.mkdir()
    cache = tmp_path / "cache"
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "ORCHESTRATOR_CACHE": str(cache), "NLTK_DATA": str(empty)}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(empty)], capture_output=True, text=True, cwd=REPO, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["before"] is False  # NLTK could not find the model by itself
    assert out["source"] == str(cache / "nltk_data")
    assert out["attempts"] == 0  # no network access was ever attempted
    assert out["verdict"] is True  # 3 sentences despite "Dr.", "D.C." and "Mr."
    assert out["sentences"] == ["Mr. Brown paid $3.50 at the U.S. border.", "It rained."]
    english = cache / "nltk_data" / "tokenizers" / "punkt_tab" / "english"
    counts = {p.name: len(p.read_text().splitlines()) for p in english.iterdir()}
    assert counts == {
        "abbrev_types.txt": 156,
        "sent_starters.txt": 39,
        "collocations.tab": 37,
        "ortho_context.tab": 20366,
    }
    assert "download" not in done.stderr.lower()
