#!/usr/bin/env python3
"""The official `openai` Python client against `sightline serve` (issue 18).

Run from the repository root after `cargo build` (the pinned client is in
scripts/reference/requirements-openai.txt; it needs nothing else):

    python3 -m venv /tmp/venv-openai && /tmp/venv-openai/bin/pip install -r scripts/reference/requirements-openai.txt
    /tmp/venv-openai/bin/python scripts/reference/openai_client_check.py [path/to/sightline]

It starts `sightline serve --port 0 --served-model-name tiny` on the compiled-in stories260K
model, then through the client: lists the models, scores a prompt with completions
(`echo`, `max_tokens=0`, `logprobs=2`), asks a greedy chat question, streams the same question,
sends a chat message with an image part (refused: a text model) and one naming an unknown
model. Then it starts a second server on the tiny LLaVA fixture
(tests/fixtures/llava/tiny-llava-hf) and asks a greedy chat question about an image
(tests/fixtures/image/inputs/small_50x37.png as a base64 data: URL), whole and streamed. It
asserts what the
client parsed (types, streamed text equal to the whole reply, errors as the client's exception
classes with their status) and writes tests/fixtures/serve/openai_client.json: each request as
the client sent it and what the client read back, which
crates/openai/tests/server.rs::openai_python_client_fixture_replays sends again to a fresh
server and compares.

On the text model the image request is recorded as the 400 the client raises; the cases
answered by the LLaVA server are marked `"server": "llava"`.
"""
import base64
import json
import os
import subprocess
import sys

import httpx2 as httpx
import openai

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "tests", "fixtures", "serve", "openai_client.json")
# A 1x1 PNG, as the image part of a chat message.
PNG = (
    "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQ"
    "DwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)


LLAVA = os.path.join(ROOT, "tests", "fixtures", "llava", "tiny-llava-hf")
PHOTO = os.path.join(ROOT, "tests", "fixtures", "image", "inputs", "small_50x37.png")


def start(binary, *extra):
    proc = subprocess.Popen(
        [binary, "serve", "--port", "0", "--served-model-name", "tiny", *extra],
        stdout=subprocess.PIPE,
        text=True,
    )
    line = proc.stdout.readline()
    base = line.split()[-1]
    assert base.startswith("http://127.0.0.1:"), line
    return proc, base


def main():
    binary = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "target", "debug", "sightline")
    proc, base = start(binary)
    sent = []

    def record(request):
        sent.append(json.loads(request.content) if request.content else None)

    http = httpx.Client(event_hooks={"request": [record]})
    client = openai.OpenAI(base_url=base, api_key="sk-local-test", http_client=http, max_retries=0)
    cases = []
    try:
        models = client.models.list()
        assert [m.id for m in models.data] == ["tiny"]
        cases.append({"name": "models", "path": "/models", "request": None,
                      "response": {"ids": [m.id for m in models.data]}})

        c = client.completions.create(model="tiny", prompt="Once upon a time, there was a little dog",
                                      max_tokens=0, echo=True, logprobs=2)
        lp = c.choices[0].logprobs
        assert lp.token_logprobs[0] is None and all(isinstance(x, float) for x in lp.token_logprobs[1:])
        assert len(lp.tokens) == len(lp.text_offset) == len(lp.top_logprobs)
        cases.append({"name": "completions_echo_logprobs", "path": "/completions", "request": sent[-1],
                      "response": {"text": c.choices[0].text, "tokens": lp.tokens,
                                   "token_logprobs": lp.token_logprobs, "top_logprobs": lp.top_logprobs,
                                   "text_offset": lp.text_offset, "usage": c.usage.model_dump()}})

        question = [{"role": "user", "content": "Tell me a story about a cat."}]
        r = client.chat.completions.create(model="tiny", messages=question, max_tokens=32)
        reply = r.choices[0].message.content
        assert r.choices[0].message.role == "assistant" and isinstance(reply, str)
        cases.append({"name": "chat_greedy", "path": "/chat/completions", "request": sent[-1],
                      "response": {"content": reply, "finish_reason": r.choices[0].finish_reason,
                                   "usage": r.usage.model_dump()}})

        deltas = []
        for chunk in client.chat.completions.create(model="tiny", messages=question, max_tokens=32, stream=True):
            if chunk.choices and chunk.choices[0].delta.content:
                deltas.append(chunk.choices[0].delta.content)
        assert "".join(deltas) == reply, (deltas, reply)
        cases.append({"name": "chat_stream", "path": "/chat/completions", "request": sent[-1],
                      "response": {"content": "".join(deltas), "chunks_with_text": len(deltas)}})

        image = [{"role": "user", "content": [{"type": "text", "text": "What is in the image?"},
                                              {"type": "image_url", "image_url": {"url": PNG}}]}]
        try:
            client.chat.completions.create(model="tiny", messages=image, max_tokens=8)
            raise AssertionError("an image part was accepted")
        except openai.BadRequestError as e:
            cases.append({"name": "chat_image_refused", "path": "/chat/completions", "request": sent[-1],
                          "response": {"status": e.status_code, "type": e.body["type"]}})

        try:
            client.completions.create(model="nope", prompt="x", max_tokens=1)
            raise AssertionError("an unknown model was accepted")
        except openai.NotFoundError as e:
            cases.append({"name": "unknown_model", "path": "/completions", "request": sent[-1],
                          "response": {"status": e.status_code, "type": e.body["type"],
                                       "code": e.body["code"]}})
    finally:
        proc.kill()
        proc.wait()

    proc, base = start(binary, "--model", LLAVA)
    try:
        client = openai.OpenAI(base_url=base, api_key="sk-local-test", http_client=http, max_retries=0)
        with open(PHOTO, "rb") as f:
            url = "data:image/png;base64," + base64.b64encode(f.read()).decode()
        about = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                              {"type": "text", "text": "What is in the image?"}]}]
        r = client.chat.completions.create(model="tiny", messages=about, max_tokens=12)
        reply = r.choices[0].message.content
        assert isinstance(reply, str) and reply, reply
        cases.append({"name": "chat_image", "server": "llava", "path": "/chat/completions", "request": sent[-1],
                      "response": {"content": reply, "finish_reason": r.choices[0].finish_reason,
                                   "usage": r.usage.model_dump()}})
        deltas = []
        for chunk in client.chat.completions.create(model="tiny", messages=about, max_tokens=12, stream=True):
            if chunk.choices and chunk.choices[0].delta.content:
                deltas.append(chunk.choices[0].delta.content)
        assert "".join(deltas) == reply, (deltas, reply)
        cases.append({"name": "chat_image_stream", "server": "llava", "path": "/chat/completions",
                      "request": sent[-1],
                      "response": {"content": "".join(deltas), "chunks_with_text": len(deltas)}})
    finally:
        proc.kill()
        proc.wait()

    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        json.dump({"openai": openai.__version__, "cases": cases}, f, indent=1)
        f.write("\n")
    print(f"{len(cases)} cases passed; wrote {os.path.relpath(OUT, ROOT)}")


if __name__ == "__main__":
    main()
