"""Loom from other languages, against a real Loom: the Node client
(clients/node) running the seed scenarios and more, the README's Node
(proto-loader) and Go examples as written, and the Go and TypeScript that
buf.gen.yaml generates (Go checked with `go vet`, TypeScript with `tsc`).

Where npm packages or Go modules cannot be downloaded, the tests that need
them are skipped with the download's error as the reason."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.server import Loom
from tests.conftest import Api
from tests.scripted_llm import Reply, ScriptedLLM
from tests.support.openai_http import base_url, converse
from tests.support.process import REPO, clean_env

NODE = REPO / "clients" / "node"
GO_EXAMPLE = REPO / "examples" / "go"
BUF = REPO / ".venv" / "bin" / "buf"
MISSING_THREAD = "thread_000000000000000000000000"


def _run(
    args: list[str], cwd: Path, timeout: float = 600, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args,
        cwd=cwd,
        env=env or clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, (
        f"{done.args} failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    )
    return done.stdout


def _tail(text: str, lines: int = 12) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _template(prefix: str) -> str:
    """buf.gen.yaml with only the plugins whose path starts with ``prefix``."""
    template = yaml.safe_load((REPO / "buf.gen.yaml").read_text())
    template["plugins"] = [p for p in template["plugins"] if p["local"].startswith(prefix)]
    assert template["plugins"], f"buf.gen.yaml has no plugin {prefix}*"
    return json.dumps(template)


def _readme_block(language: str, marker: str) -> str:
    readme = (REPO / "README.md").read_text()
    blocks = [b for b in re.findall(rf"```{language}\n(.*?)```", readme, re.DOTALL) if marker in b]
    assert len(blocks) == 1, f"README: expected one {language} block with {marker!r}"
    return blocks[0]


def _route(body: dict[str, Any]) -> Reply:
    """The scripted model: echoes, asks for get_weather, or is slow (to
    answer, or to stream)."""
    messages = body["messages"]
    last = messages[-1]
    if last["role"] == "tool":
        return Reply(text=f"It is {json.loads(last['content'])['forecast']}.")
    if body.get("tools") and "weather" in last["content"]:
        calls = [{"id": "call_1", "name": "get_weather", "arguments": '{"city": "Paris"}'}]
        return Reply(tool_calls=calls)
    if "[slow]" in last["content"]:
        return Reply(text="late", first_byte_delay=3.0)
    if "[paced]" in last["content"]:  # streams for 6 s, a word at a time
        return Reply(text=" ".join(f"w{i}" for i in range(60)), chunk_delay=0.1)
    return Reply(text=f"You said: {last['content']}")


def _saw_history(llm: ScriptedLLM, question: str, earlier: str) -> bool:
    """Whether the model got ``earlier`` in the prompt that asked ``question``."""
    for request in llm.requests:
        contents = [m.get("content") for m in (request.body or {}).get("messages", [])]
        if contents and contents[-1] == question:
            return earlier in contents[:-1]
    raise AssertionError(f"the model never got {question!r}")


async def _run_against(loom: Loom, api: Api, args: list[str], cwd: Path, **env_vars: str) -> str:
    """A client process against the in-process Loom (awaited, so the server
    keeps serving on this event loop)."""
    env = clean_env(LOOM_ADDRESS=f"127.0.0.1:{loom.port}", LOOM_API_KEY=api.key, **env_vars)
    proc = await asyncio.create_subprocess_exec(
        *args,
        cwd=cwd,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=300)
    assert proc.returncode == 0, f"{args} failed:\n{out.decode()[-6000:]}\n{err.decode()[-4000:]}"
    return out.decode()


# ----------------------------------------------------------------------- Node


@pytest.fixture(scope="session")
def node() -> Path:
    """clients/node with its packages installed (npm ci, skipped when the
    lockfile has not changed since) and its code generated."""
    npm = shutil.which("npm")
    if npm is None:
        pytest.skip("npm is not installed: the Node client and example are not tested")
    lock = hashlib.sha256((NODE / "package-lock.json").read_bytes()).hexdigest()
    stamp = NODE / "node_modules" / ".loom-installed"
    if not stamp.is_file() or stamp.read_text() != lock:
        done = _run([npm, "ci", "--no-audit", "--no-fund"], NODE)
        if done.returncode != 0:
            pytest.skip(f"npm packages cannot be installed (npm ci):\n{_tail(done.stderr)}")
        stamp.write_text(lock)
    _ok(_run([npm, "run", "generate"], NODE, timeout=120))
    return NODE


def test_node_client_typechecks(node: Path) -> None:
    _ok(_run(["npm", "run", "typecheck"], node, timeout=300))


async def test_node_client_seed_scenarios_and_calls(
    node: Path, loom: Loom, api: Api, llm: ScriptedLLM
) -> None:
    llm.set_default(_route)
    out = await _run_against(
        loom, api, ["node", "--import", "tsx", "--test", "test/scenarios.test.ts"], node
    )
    assert re.search(r"^# fail 0$", out, re.MULTILINE), out
    assert re.search(r"^# pass [1-9]", out, re.MULTILINE), out
    # The continued thread reached the model with its history.
    assert _saw_history(llm, "What did I just tell you?", "My favorite color is blue.")
    # The generation settings reached it too: the assistant's, then the message's.
    last = "node generation settings"
    [sent] = [r.body for r in llm.requests if r.body["messages"][-1]["content"] == last]
    assert sent["temperature"] == 0
    assert sent["reasoning_effort"] == "low"
    assert sent["max_completion_tokens"] == 57
    assert sent["response_format"]["json_schema"]["name"] == "person"


async def test_the_openai_npm_package_runs_a_conversation_over_the_http_door(
    node: Path, loom: Loom, api: Api, llm: ScriptedLLM
) -> None:
    llm.set_default(converse)
    args = ["node", "--import", "tsx", "--test", "test/openai.test.ts"]
    out = await _run_against(loom, api, args, node, LOOM_OPENAI_BASE_URL=base_url(loom))
    assert re.search(r"^# pass 1$", out, re.MULTILINE), out
    assert re.search(r"^# skipped 0$", out, re.MULTILINE), out
    assert _saw_history(llm, "What did I just tell you?", "My favorite color is blue.")


async def test_readme_node_example_runs_as_written(
    node: Path, loom: Loom, api: Api, llm: ScriptedLLM
) -> None:
    example = node / "examples" / "proto-loader.mjs"
    assert _readme_block("js", "proto-loader") == example.read_text()
    llm.set_default(_route)
    out = await _run_against(loom, api, ["node", str(example)], node)
    assert out.splitlines() == [
        "You said: My favorite color is blue.",
        "You said: What did I just tell you?",
        f"error: NOT_FOUND THREAD_NOT_FOUND {MISSING_THREAD}",
    ]
    # keepCase: the thread_id sent was read, so the thread went on.
    assert _saw_history(llm, "What did I just tell you?", "My favorite color is blue.")


async def test_readme_node_client_example_runs(
    node: Path, loom: Loom, api: Api, llm: ScriptedLLM, tmp_path: Path
) -> None:
    """The README's client snippet, importing the client from its sources."""
    snippet = _readme_block("ts", "@loom/client")
    source = (node / "src" / "index.js").as_posix()
    script = tmp_path / "snippet.mts"
    script.write_text(snippet.replace('"@loom/client"', json.dumps(source)))
    llm.set_default(_route)
    out = await _run_against(loom, api, ["node", "--import", "tsx", str(script)], node)
    lines = out.splitlines()
    assert lines[:2] == [
        "You said: My favorite color is blue.",
        "You said: What did I just tell you?",
    ]
    assert lines[2].startswith("thread_")
    assert lines[3] == f"{{ thread_id: '{MISSING_THREAD}' }}"


def test_buf_gen_yaml_generates_the_typescript_the_client_compiles(
    node: Path, tmp_path: Path
) -> None:
    """The TypeScript half of buf.gen.yaml writes what the client's own
    template does (the client's typecheck compiles that): one set of
    options, and no second compile."""
    _ok(
        _run(
            [str(BUF), "generate", "--template", _template("clients/node/"), "-o", str(tmp_path)],
            REPO,
        )
    )
    generated = tmp_path / "gen" / "ts" / "loom" / "v1"
    names = sorted(p.name for p in generated.glob("*.ts"))
    assert names == [
        "assistant.ts",
        "common.ts",
        "generation.ts",
        "memory.ts",
        "thread.ts",
        "tools.ts",
    ]
    for name in names:
        assert (generated / name).read_text() == (
            node / "src" / "gen" / "loom" / "v1" / name
        ).read_text()


# ------------------------------------------------------------------------- Go


@pytest.fixture(scope="session")
def go_example(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """examples/go, with the client buf.gen.yaml generates, vetted and built."""
    go = shutil.which("go")
    if go is None:
        pytest.skip("Go is not installed: the Go example is not tested")
    for plugin in ("protoc-gen-go", "protoc-gen-go-grpc"):
        assert (REPO / ".tools" / "bin" / plugin).is_file(), (
            f"{plugin} missing: run make go-plugins"
        )
    work = tmp_path_factory.mktemp("go") / "example"
    shutil.copytree(GO_EXAMPLE, work, ignore=shutil.ignore_patterns("gen"))
    _ok(_run([str(BUF), "generate", "--template", _template(".tools/bin/"), "-o", str(work)], REPO))
    env = clean_env(GOTOOLCHAIN="local", GOFLAGS="-mod=readonly")
    done = _run([go, "mod", "download"], work, env=env)
    if done.returncode != 0:
        pytest.skip(f"Go modules cannot be downloaded (go mod download):\n{_tail(done.stderr)}")
    _ok(_run([go, "vet", "./..."], work, env=env))
    _ok(_run([go, "build", "-o", "quickstart", "."], work, env=env))
    return work


def test_protoc_generates_go_without_m_flags(go_example: Path, tmp_path: Path) -> None:
    """The README's protoc command: go_package in the files is enough."""
    plugins = REPO / ".tools" / "bin"
    env = clean_env(PATH=f"{plugins}{os.pathsep}{os.environ['PATH']}")
    protos = sorted(str(p.relative_to(REPO)) for p in (REPO / "proto").rglob("*.proto"))
    out = tmp_path / "gen" / "go"
    out.mkdir(parents=True)
    args = [str(REPO / ".venv" / "bin" / "python"), "-m", "grpc_tools.protoc", "-Iproto"]
    args += [f"--go_out={out}", "--go_opt=paths=source_relative"]
    args += [f"--go-grpc_out={out}", "--go-grpc_opt=paths=source_relative", *protos]
    _ok(_run(args, REPO, env=env))
    by_protoc = sorted(p.name for p in (out / "loom" / "v1").glob("*.go"))
    by_buf = sorted(p.name for p in (go_example / "gen" / "go" / "loom" / "v1").glob("*.go"))
    assert by_protoc == by_buf
    assert "package loomv1" in (out / "loom" / "v1" / "thread.pb.go").read_text()


def test_buf_gen_yaml_generates_go_that_vets(go_example: Path) -> None:
    generated = sorted(p.name for p in (go_example / "gen" / "go" / "loom" / "v1").glob("*.go"))
    assert "thread_grpc.pb.go" in generated
    assert len(generated) == 9  # six message files, three services
    code = (go_example / "gen" / "go" / "loom" / "v1" / "thread.pb.go").read_text()
    # One set of event types: no `SendMessageResponse_Started_` beside `..._Memory`.
    assert "type ReplyStarted struct" in code
    assert "SendMessageResponse_Started_" not in code


async def test_readme_go_example_runs_as_written(
    go_example: Path, loom: Loom, api: Api, llm: ScriptedLLM
) -> None:
    assert _readme_block("go", "package main") == (GO_EXAMPLE / "main.go").read_text()
    llm.set_default(_route)
    out = await _run_against(loom, api, [str(go_example / "quickstart")], go_example)
    assert out.splitlines() == [
        "You said: My favorite color is blue.",
        "You said: What did I just tell you?",
        f"error: NotFound THREAD_NOT_FOUND {MISSING_THREAD}",
    ]
    assert _saw_history(llm, "What did I just tell you?", "My favorite color is blue.")
