"""`vllm serve --quantization wina` as a subprocess: OpenAI endpoints and start-up errors."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

import pytest

from conftest import engine_env, gpu_count, requires_vllm

pytestmark = [requires_vllm, pytest.mark.server]
requests = pytest.importorskip("requests")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve_cmd(model, port, config: str) -> list[str]:
    # On a GPU the module's server holds its memory share while a start-up test runs a
    # second one, which vLLM's default share (0.92) would refuse before reading any setting.
    share = ["--gpu-memory-utilization", "0.3"] if gpu_count() else []
    return [sys.executable, "-m", "vllm.entrypoints.cli.main", "serve", str(model),
            "--host", "127.0.0.1", "--port", str(port), "--quantization", "wina",
            "--additional-config", config, "--enforce-eager", "--dtype", "float32",
            "--max-model-len", "256", "--served-model-name", "tiny", *share]


@pytest.fixture(scope="module")
def server(tiny_models, tmp_path_factory):
    port = _free_port()
    log = tmp_path_factory.mktemp("server") / "serve.log"
    env = engine_env()
    env.pop("VLLM_ENABLE_V1_MULTIPROCESSING")  # the real multi-process layout
    with open(log, "w") as fh:
        proc = subprocess.Popen(_serve_cmd(tiny_models["llama"], port,
                                           json.dumps({"wina": {"sparsity": 0.5}})),
                                stdout=fh, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 300
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"server exited with {proc.returncode}:\n{log.read_text()[-5000:]}")
        try:
            if requests.get(url + "/health", timeout=2).status_code == 200:
                break
        except requests.ConnectionError:
            pass
        time.sleep(1)
    else:
        proc.kill()
        pytest.fail("server did not become healthy:\n" + log.read_text()[-5000:])
    yield url, log
    proc.terminate()
    proc.wait(timeout=60)


def test_completions(server):
    url, log = server
    r = requests.post(url + "/v1/completions", json={
        "model": "tiny", "prompt": "The module provides", "max_tokens": 8, "temperature": 0},
        timeout=60)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["usage"]["completion_tokens"] == 8 and isinstance(body["choices"][0]["text"], str)
    assert "wina: 8 linears gated in 2 decoder layers" in log.read_text()


def test_chat_completions(server):
    url, _ = server
    r = requests.post(url + "/v1/chat/completions", json={
        "model": "tiny", "messages": [{"role": "user", "content": "Describe a list."}],
        "max_tokens": 6, "temperature": 0}, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["role"] == "assistant"


def test_chat_completions_streaming(server):
    url, _ = server
    with requests.post(url + "/v1/chat/completions", json={
            "model": "tiny", "messages": [{"role": "user", "content": "Hello"}],
            "max_tokens": 6, "temperature": 0, "stream": True, "ignore_eos": True,
            "stream_options": {"include_usage": True}}, stream=True, timeout=60) as r:
        assert r.status_code == 200
        events = [json.loads(line[6:]) for line in r.iter_lines(decode_unicode=True)
                  if line.startswith("data: ") and line != "data: [DONE]"]
    deltas = [e for e in events if e.get("choices")]
    assert len(deltas) >= 2
    assert events[-1]["usage"]["completion_tokens"] == 6


@pytest.mark.parametrize("config,message", [
    ('{"wina": {"sparsity": 2}}', "wina setting 'sparsity': got 2.0"),
    ('{"wina": {"mode": "threshold"}}', "wina setting 'calibration'"),
])
def test_bad_config_exits_quickly(tiny_models, config, message):
    start = time.time()
    proc = subprocess.run(_serve_cmd(tiny_models["llama"], _free_port(), config),
                          capture_output=True, text=True, env=engine_env(), timeout=240)
    assert proc.returncode != 0
    assert message in proc.stdout + proc.stderr
    assert time.time() - start < 120
