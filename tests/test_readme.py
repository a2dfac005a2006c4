"""The README's examples, run exactly as written against a real Loom process
on 127.0.0.1:50051 (tenant key "dev-key") and the scripted model."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import MODEL_DIR
from tests.scripted_llm import Reply, ScriptedLLM
from tests.support.ferretdb import FerretDB
from tests.support.process import LoomProcess, clean_env, grpcurl_bin, json_objects

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
ADDRESS = "127.0.0.1:50051"
HTTP_ADDRESS = "127.0.0.1:8080"  # the HTTP door, where the README's OpenAI examples call it


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, re.DOTALL)


def _route(body: dict[str, Any]) -> Reply:
    system = body["messages"][0]["content"] if body["messages"][0]["role"] == "system" else ""
    last = body["messages"][-1]
    if "From the exchange below" in system:
        facts = ["The user is allergic to peanuts."] if "peanuts" in last["content"] else []
        return Reply(text=json.dumps({"facts": facts}))
    if "For each new fact" in system:
        return Reply(text='{"operations": []}')
    if last["role"] == "tool":
        return Reply(text=f"Here is what I found: {last['content']}")
    if body.get("tools") and "weather" in last["content"]:
        return Reply(
            tool_calls=[{"id": "call_1", "name": "get_weather", "arguments": '{"city": "Paris"}'}]
        )
    if "remembered_facts" in system and "peanuts" in system:
        return Reply(text="You told me you are allergic to peanuts.")
    return Reply(text=f"You said: {last['content']}")


@pytest.fixture(scope="module")
def readme_server(ferretdb: FerretDB, llm: ScriptedLLM, tmp_path_factory: Any) -> Iterator[None]:
    for port in (50051, 8080):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                pytest.fail(f"127.0.0.1:{port} is taken; the README's examples need it free")
    env = clean_env(
        LOOM_LISTEN=ADDRESS,
        LOOM_HTTP_LISTEN=HTTP_ADDRESS,
        LOOM_MONGODB_URI=ferretdb.uri,
        LOOM_MONGODB_DB="loom_readme",
        LOOM_LLM_BASE_URL=llm.base_url,
        LOOM_DEV_API_KEY="dev-key",
        LOOM_DATA_DIR=tempfile.mkdtemp(prefix="loom-readme-"),
        LOOM_EMBEDDING_MODEL_DIR=str(MODEL_DIR),
        LOOM_JOB_POLL_SECONDS="0.05",
    )
    # A minute: the process loads the embedding model, and CI machines are shared.
    process = LoomProcess(env, tmp_path_factory.mktemp("readme"), "readme").wait_ready(60)
    yield
    process.terminate()


@pytest.fixture
def routed(llm: ScriptedLLM) -> ScriptedLLM:
    llm.set_default(_route)
    return llm


def _run(code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


# Each Python example, known by a line of it, and what its output must show.
EXPECTED = {
    'reply = loom.send_message("Hello, Loom!")': ["You said: Hello, Loom!"],
    "for event in loom.stream_message(": ["You said: What did I just tell you?"],
    'support = loom.assistants.create(name="Support"': [
        "alice's thread:",
        "2 messages",
        "user: My order #123 is late.",
        "assistant: You said: My order #123 is late.",
        "bob ",
    ],
    'chef = loom.assistants.create(name="Chef"': [
        "The user is allergic to peanuts.",
        "reply: You told me you are allergic to peanuts.",
    ],
    "def get_weather(city: str) -> dict:": ['"forecast": "sunny"'],
    "async def main():": ["You said: Hello from asyncio", "THREAD_NOT_FOUND"],
    # Only 50051 serves here: round_robin skips the replica that is down.
    'balanced = [("grpc.lb_policy_name", "round_robin")]': ["You said: Hello, fleet!"],
    'client = OpenAI(base_url="http://127.0.0.1:8080/v1"': [
        "You said: What did I just tell you?\nYou said: Tell me again.\n",
        "user My favorite color is blue.\nassistant You said: My favorite color is blue.\n",
        'Here is what I found: {"forecast": "sunny"}',
    ],
}


def test_every_python_example_runs(readme_server: None, routed: ScriptedLLM) -> None:
    blocks = _blocks("python")
    assert len(blocks) == len(EXPECTED)
    outputs: dict[str, str] = {}
    for marker, lines in EXPECTED.items():
        [code] = [b for b in blocks if marker in b]
        outputs[marker] = output = _run(code)
        for line in lines:
            assert line in output, f"{marker!r} printed:\n{output}"
    chef = outputs['chef = loom.assistants.create(name="Chef"']
    remembered = next(line for line in chef.splitlines() if line.startswith("remembered:"))
    assert "The user is allergic to peanuts." in remembered


def test_the_first_grpcurl_example_runs_as_written(
    readme_server: None, routed: ScriptedLLM, tmp_path: Path
) -> None:
    first = next(b for b in _blocks("sh") if "My favorite color is blue." in b)
    command = first.split("\n\n")[0].replace("grpcurl", grpcurl_bin(), 1)
    command = "\n".join(line for line in command.splitlines() if not line.startswith("#"))
    # In the test's own folder: whatever a shell example leaves behind must
    # not land in the repository.
    done = subprocess.run(
        ["bash", "-c", command],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    events = json_objects(done.stdout)
    assert events[0]["started"]["thread_created"] is True
    assert events[-1]["completed"]["message"]["content"] == "You said: My favorite color is blue."


def test_the_first_curl_example_runs_as_written(
    readme_server: None, routed: ScriptedLLM, tmp_path: Path
) -> None:
    first = next(b for b in _blocks("sh") if "curl -s http://127.0.0.1:8080/v1/conversations" in b)
    command = first.split("\n# ")[0]
    done = subprocess.run(
        ["bash", "-c", command],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    created = json.loads(done.stdout)
    assert created["object"] == "conversation"
    assert created["id"].startswith("thread_")
    assert created["metadata"] == {"topic": "colors"}
