"""Safe loading: pickle weights refused unless allowed, no model code run unless trusted, YAML loaded
safely, and no hub look-up for a path that is not on disk."""

from __future__ import annotations

import http.server
import json
import os
import pickle
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dpokit.cli import main
from dpokit.config import load_config
from dpokit.errors import UserError
from dpokit.policies.lm.load import load_model
from helpers import tiny_model_dir, write_pairs

ROOT = Path(__file__).resolve().parents[1]


class Hostile:
    """Unpickling this creates ``marker``: proof that a pickle was read."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory.mktemp("safe"))


def pickled_copy(model_dir: Path, dest: Path) -> Path:
    """The same model with its weights as ``pytorch_model.bin`` (a torch pickle) instead of safetensors."""
    shutil.copytree(model_dir, dest)
    torch.save(load_file(str(dest / "model.safetensors")), dest / "pytorch_model.bin")
    (dest / "model.safetensors").unlink()
    return dest


def test_pickle_weights_refused_unless_allowed(model_dir, tmp_path):
    folder = pickled_copy(model_dir, tmp_path / "pickled")
    with pytest.raises(UserError, match="refusing pickle weights 'pytorch_model.bin'.*--allow-pickle"):
        load_model(str(folder))
    model = load_model(str(folder), allow_pickle=True)
    expected = load_model(str(model_dir)).state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in model.state_dict().items())


def test_cli_refuses_pickle(model_dir, tmp_path, capsys):
    folder = pickled_copy(model_dir, tmp_path / "pickled")
    data = write_pairs(tmp_path / "pairs.jsonl", n=4)
    assert main(["dpo", "--model", str(folder), "--data", str(data), "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dpokit: error:") and "pytorch_model.bin" in err and "--allow-pickle" in err


def test_stray_pickle_next_to_safetensors_is_never_read(model_dir, tmp_path):
    folder = tmp_path / "with-stray"
    shutil.copytree(model_dir, folder)
    marker = tmp_path / "unpickled"
    (folder / "training_args.bin").write_bytes(pickle.dumps(Hostile(marker)))
    load_model(str(folder))
    assert not marker.exists()


def test_config_pointing_at_pickle_is_refused(model_dir, tmp_path):
    folder = tmp_path / "named"
    shutil.copytree(model_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "transformers_weights": "adapter_model.bin"}))
    with pytest.raises(UserError, match="refusing pickle weights 'adapter_model.bin'"):
        load_model(str(folder))


def test_remote_code_not_run_unless_trusted(model_dir, tmp_path):
    folder = tmp_path / "remote"
    shutil.copytree(model_dir, folder)
    marker = tmp_path / "code-ran"
    (folder / "evil.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="evil", auto_map={"AutoConfig": "evil.EvilConfig",
                                              "AutoModelForCausalLM": "evil.EvilModel"})
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="cannot load a causal LM"):
        load_model(str(folder))
    assert not marker.exists()


def test_yaml_is_loaded_safely(tmp_path):
    marker = tmp_path / "yaml-ran"
    cfg = tmp_path / "evil.yaml"
    cfg.write_text(f"model: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_config(cfg)
    assert not marker.exists()


def test_missing_model_is_a_clear_error_without_hub(tmp_path):
    assert os.environ["HF_HUB_OFFLINE"] == "1" and os.environ["TRANSFORMERS_OFFLINE"] == "1"
    with pytest.raises(UserError, match="model folder not found.*hub downloads are off.*DPOKIT_ALLOW_HUB=1"):
        load_model("some-org/some-model")
    with pytest.raises(UserError, match="model folder not found") as exc:
        load_model(str(tmp_path / "nothing-here"))
    assert "hub" not in str(exc.value)


class RecordingHub(http.server.BaseHTTPRequestHandler):
    """A local stand-in for the hub: answers 404 to everything and remembers what was asked."""

    requests: list[str] = []

    def do_HEAD(self):
        RecordingHub.requests.append(self.path)
        self.send_response(404)
        self.end_headers()

    do_GET = do_HEAD

    def log_message(self, *args):
        pass


def test_hub_only_with_opt_in():
    """With DPOKIT_ALLOW_HUB=1 a hub id is looked up on the hub (here a local server that knows no
    model); without it the same id is refused before any request (previous test)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), RecordingHub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    code = ("import os; from dpokit.policies.lm.load import load_tokenizer\n"
            "print(os.environ.get('HF_HUB_OFFLINE'))\n"
            "try: load_tokenizer('some-org/some-model')\n"
            "except Exception as e: print(e)\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DPOKIT_ALLOW_HUB": "1", "HF_HUB_OFFLINE": "0",
           "TRANSFORMERS_OFFLINE": "0", "HF_ENDPOINT": f"http://127.0.0.1:{server.server_port}"}
    try:
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120).stdout
    finally:
        server.shutdown()
    assert out.splitlines()[0] == "0" and "cannot load a tokenizer" in out and "hub downloads are off" not in out
    assert any("some-org/some-model" in path for path in RecordingHub.requests), RecordingHub.requests
